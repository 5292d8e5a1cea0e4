"""The text plugin's score equals a direct computation with the plain HF model; one forward pass
scores chosen and rejected; saved models load with plain transformers / peft and generate."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from conftest import TINY
from mmalign.config import load_config
from mmalign.data import Record
from mmalign.errors import DataError, SkipRecord
from mmalign_text.layer_masks import mask_plan
from mmalign_text.reward import TextReward

RECORDS = [
    {"prompt": "great kaka lolo", "chosen": " superb mimi dull", "rejected": " awful"},
    {"prompt": "dull", "chosen": " brilliant kalo kalo kalo mi", "rejected": " boring lomi tu"},
    {"prompt": "kaka lo ren tu sa vo pel", "chosen": " great", "rejected": " dreadful kaka"},
]


def make(tokenizer_dir, **model):
    cfg = load_config(data={"model": {"tiny": dict(TINY), "tokenizer": str(tokenizer_dir), **model},
                            "data": {"max_length": 64}})
    torch.manual_seed(0)
    reward = TextReward(cfg.model, cfg.data)
    return reward, reward.load_policy().eval()


def examples(reward, rows=RECORDS, paired=True):
    return [reward.prepare(Record(r, f"t:{i}", Path(".")), paired=paired) for i, r in enumerate(rows)]


def direct_score(model, tokenizer, prompt, completion, first_n=None):
    """sum_t log softmax(logits)[y_t] over completion tokens (the first ``first_n`` only, if given),
    with the plain HF model; ids as TRL 1.16 makes them (prompt + completion + EOS tokenized whole)."""
    p = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    assert full[:len(p)] == p
    c = full[len(p):]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logps = model(ids).logits.log_softmax(-1)[0]
    return sum(logps[len(p) - 1 + i, tok].item() for i, tok in enumerate(c[:first_n]))


def test_score_equals_direct_computation(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    with torch.no_grad():
        scores = reward.score(model, reward.collate(examples(reward)))
    for i, r in enumerate(RECORDS):
        assert scores.chosen[i].item() == pytest.approx(direct_score(model, reward.tokenizer, r["prompt"], r["chosen"]), abs=1e-5)
        assert scores.rejected[i].item() == pytest.approx(direct_score(model, reward.tokenizer, r["prompt"], r["rejected"]), abs=1e-5)
    expected_len = [len(r["chosen"].split()) + 1 for r in RECORDS]
    assert scores.chosen_lengths.tolist() == expected_len


def test_chosen_and_rejected_in_one_forward_pass(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    mask_plan(model)  # the probe of the model's attention masks runs its own forwards, once per model
    calls = []
    model.register_forward_hook(lambda m, a, k: calls.append(1))
    with torch.no_grad():
        reward.score(model, reward.collate(examples(reward)))
    assert len(calls) == 1


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_lm_head_sees_only_the_positions_that_predict_completion_tokens(tokenizer_dir, prefix_sharing):
    reward, model = make(tokenizer_dir, options={"prefix_sharing": prefix_sharing})
    mask_plan(model)  # the probe's forwards (once per model) run the head on its 8 positions
    seen = []
    model.lm_head.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    exs = examples(reward)
    with torch.no_grad():
        reward.score(model, reward.collate(exs))
    completion_tokens = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in exs)
    assert seen == [(completion_tokens, model.config.vocab_size)]  # no prompt, no padding positions


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_fused_log_probs_equal_full_logits_in_scores_and_gradients(tokenizer_dir, prefix_sharing):
    """fused_logps (the head only at target positions) against the model's own logits at every
    position, log-softmaxed and gathered."""
    reward, model = make(tokenizer_dir, options={"prefix_sharing": prefix_sharing})
    batch = reward.collate(examples(reward, PACKABLE))

    def run(fused):
        reward.cfg.options["fused_logps"] = fused
        model.zero_grad()
        s = reward.score(model, batch)
        (s.chosen.sum() - 0.5 * s.rejected.sum()).backward()
        return torch.cat([s.chosen, s.rejected]), {n: p.grad.clone() for n, p in model.named_parameters()}

    fused, g_fused = run(True)
    full, g_full = run(False)
    assert torch.allclose(fused, full, atol=1e-5)
    for name in g_fused:
        assert torch.allclose(g_fused[name], g_full[name], atol=1e-5), name


def test_models_that_post_process_logits_take_the_full_logits_path(tokenizer_dir):
    """Gemma-2 soft-caps its logits after the head: the fused head would cap log-probs, so the
    plugin takes the model's own logits, and scores still equal the direct computation."""
    from mmalign_text.logps import fused_head_supported

    cfg = load_config(data={"model": {"tiny": {**TINY, "model_type": "gemma2", "head_dim": 16,
                                               "final_logit_softcapping": 5.0},
                                      "tokenizer": str(tokenizer_dir)}})
    torch.manual_seed(0)
    reward = TextReward(cfg.model, cfg.data)
    model = reward.load_policy().eval()
    assert not fused_head_supported(model)
    with torch.no_grad():
        scores = reward.score(model, reward.collate(examples(reward)))
    for i, r in enumerate(RECORDS):
        assert scores.chosen[i].item() == pytest.approx(direct_score(model, reward.tokenizer, r["prompt"], r["chosen"]), abs=1e-5)


@pytest.mark.slow
def test_compiled_layers_give_the_same_scores_and_gradients(tokenizer_dir, tmp_path, pairs_file):
    """model.options.compile: the decoder layers compiled one by one (dynamic shapes); scores and
    gradients equal eager, also on a second batch of another shape, and training runs with a
    frozen-copy reference."""
    from conftest import base_config
    from mmalign import train
    from mmalign_text.causal_lm import compile_layers

    reward, model = make(tokenizer_dir)
    batches = [reward.collate(examples(reward, PACKABLE)), reward.collate(examples(reward))]

    def run(batch):
        model.zero_grad()
        s = reward.score(model, batch)
        (s.chosen.sum() - 0.5 * s.rejected.sum()).backward()
        return torch.cat([s.chosen, s.rejected]), {n: p.grad.clone() for n, p in model.named_parameters()}

    eager = [run(b) for b in batches]
    assert compile_layers(model) == TINY["num_hidden_layers"]
    for batch, (scores, grads) in zip(batches, eager):
        compiled, compiled_grads = run(batch)
        assert torch.allclose(compiled, scores, atol=1e-5)
        for name in grads:
            assert torch.allclose(compiled_grads[name], grads[name], atol=1e-5), name
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, model={"options": {"compile": True}},
                      train={"max_steps": 2}, reference={"strategy": "copy"})
    result = train(cfg, log=lambda *a: None)
    assert result.history[0]["loss"] == pytest.approx(0.693147, abs=1e-5)


def test_log_probs_are_chunked_and_recomputed_with_equal_gradients(tokenizer_dir, monkeypatch):
    """More targets than one chunk holds: the head runs per chunk (recomputed in the backward), and
    scores and gradients equal those of a single chunk."""
    import mmalign_text.logps as logps

    reward, model = make(tokenizer_dir)
    batch = reward.collate(examples(reward))

    def run():
        model.zero_grad()
        s = reward.score(model, batch)
        (s.chosen.sum() - 0.5 * s.rejected.sum()).backward()
        return torch.cat([s.chosen, s.rejected]), {n: p.grad.clone() for n, p in model.named_parameters()}

    whole, g_whole = run()
    calls = []
    hook = model.lm_head.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    monkeypatch.setattr(logps, "CHUNK_ELEMENTS", 4 * model.config.vocab_size)  # 4 positions a chunk
    chunked, g_chunked = run()
    hook.remove()
    n = len(batch.targets)
    forward_chunks = -(-n // 4)
    assert calls[:forward_chunks] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert len(calls) == 2 * forward_chunks  # each chunk recomputed once in the backward
    assert torch.allclose(whole, chunked, atol=1e-6)
    for name in g_whole:
        assert torch.allclose(g_whole[name], g_chunked[name], atol=1e-6), name


def test_a_batch_counts_the_tokens_its_forward_reads(tokenizer_dir):
    reward, _ = make(tokenizer_dir)
    exs = examples(reward)
    prompts = sum(len(e.prompt_ids) for e in exs)
    completions = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in exs)
    assert int(reward.batch_counts(reward.collate(exs))["tokens"]) == prompts + completions  # shared prompts
    reward.cfg.options["prefix_sharing"] = False
    assert int(reward.batch_counts(reward.collate(exs))["tokens"]) == 2 * prompts + completions  # a row each


def test_truncation_and_eos(tokenizer_dir):
    """data.max_length: each row prompt + completion keeps its first tokens (TRL 1.16's keep_start);
    legacy: the prompt keeps its last max_prompt_length tokens, a completion its first."""
    def prepare(data: dict, record: dict, paired=True):
        cfg = load_config(data={"model": {"tiny": dict(TINY), "tokenizer": str(tokenizer_dir)}, "data": data})
        return TextReward(cfg.model, cfg.data).prepare(Record(record, "t:1", Path(".")), paired=paired)

    ex = prepare({"max_length": 4}, RECORDS[1])  # prompt "dull": 1 token
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert ex.prompt_ids == tok("dull")["input_ids"]
    assert ex.chosen_ids == tok(" brilliant kalo kalo")["input_ids"]
    assert ex.rejected_ids == tok(" boring lomi tu")["input_ids"]  # its EOS cut
    full = prepare({"max_length": 64}, RECORDS[2], paired=False)
    assert full.chosen_ids[-1] == tok.eos_token_id and full.rejected_ids is None
    legacy = prepare({"tokenization": "legacy", "max_prompt_length": 2, "max_completion_length": 3},
                     {**RECORDS[0], "prompt": "great kaka lolo"})
    assert legacy.prompt_ids == tok("kaka lolo")["input_ids"]
    assert legacy.chosen_ids == tok("superb mimi dull")["input_ids"]  # no room left for EOS


@pytest.mark.parametrize("record,message", [
    ({"prompt": "a", "rejected": "b"}, 'missing key "chosen"'),
    ({"prompt": "a", "chosen": "  ", "rejected": "b"}, '"chosen" is empty'),
    ({"prompt": "a", "chosen": 3, "rejected": "b"}, "must be a string or a list of chat messages"),
    ({"chosen": "a"}, 'missing key "prompt"'),  # with "rejected" too the prompt is implicit
    ({"prompt": "a", "chosen": "x", "rejected": [{"role": "assistant", "content": "y"}]}, "both be strings"),
])
def test_bad_records_name_the_record(tokenizer_dir, record, message):
    reward, _ = make(tokenizer_dir)
    with pytest.raises(DataError) as e:
        reward.prepare(Record(record, "pairs.jsonl:7", Path(".")), paired=True)
    assert "pairs.jsonl:7" in str(e.value) and message in str(e.value)


def test_identical_pair_is_a_counted_skip(tokenizer_dir):
    reward, _ = make(tokenizer_dir)
    with pytest.raises(SkipRecord):
        reward.prepare(Record({"prompt": "a", "chosen": "b", "rejected": "b"}, "t:1", Path(".")), paired=True)


def test_conversational_records_use_the_chat_template(tokenizer_dir, tmp_path):
    reward, model = make(tokenizer_dir)
    reward.tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}")
    rec = {"prompt": [{"role": "user", "content": "great kaka"}],
           "chosen": [{"role": "assistant", "content": "superb"}],
           "rejected": [{"role": "assistant", "content": "awful"}]}
    ex = reward.prepare(Record(rec, "t:1", Path(".")), paired=True)
    tok = reward.tokenizer
    assert tok.decode(ex.prompt_ids) == tok.decode(tok("user great kaka <eos> assistant", add_special_tokens=False)["input_ids"])
    assert ex.chosen_ids == tok("superb <eos>", add_special_tokens=False)["input_ids"]  # EOS not doubled


def test_full_model_save_loads_with_plain_transformers_and_generates(tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reward, model = make(tokenizer_dir)
    reward.save(model, tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    batch = reward.collate(examples(reward))
    with torch.no_grad():
        assert torch.equal(reward.score(model, batch).chosen, reward.score(loaded, batch).chosen)
    out = loaded.generate(**tok(["great kaka"], add_special_tokens=False, return_tensors="pt"),
                          max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > 2


def test_lora_save_loads_with_peft_and_reference_has_no_copy(tokenizer_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mmalign.batches import Batch
    from mmalign_reference.strategies import DisabledAdapters, make_reference

    reward, model = make(tokenizer_dir, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ref = make_reference("auto", model, reward, None, True, torch.device("cpu"))
    assert isinstance(ref, DisabledAdapters) and ref.policy is model  # the same weights, no copy
    with torch.no_grad():  # make the adapter non-trivial
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    batch = reward.collate(examples(reward))
    with torch.no_grad():
        pol = reward.score(model, batch).chosen
        base = ref.scores(Batch(batch)).chosen
    assert not torch.allclose(pol, base)
    reward.save(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "adapter" / "base_model"),
                                       tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(reward.score(loaded, batch).chosen, pol, atol=1e-5)
        assert loaded.generate(torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False).shape[1] == 5


# Pair lengths 9, 11, 12, 5 and 6 tokens: first-fit decreasing into rows of 12 packs the two
# short pairs into one row, so 5 pairs take 4 rows.
PACKABLE = RECORDS + [{"prompt": "dull", "chosen": " great", "rejected": " awful"},
                      {"prompt": "kaka lo", "chosen": " superb", "rejected": " dull"}]


def one_row(lengths, pack):
    return [list(range(len(lengths)))]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_sharing_and_packing_equal_the_plain_path_in_scores_and_gradients(tokenizer_dir, attn, monkeypatch):
    import mmalign_text.prefix_sharing as ps

    reward, model = make(tokenizer_dir, options={"attn_implementation": attn})
    exs = examples(reward, PACKABLE)

    def collate(**options):
        reward.cfg.options.update(options)
        return reward.collate(exs)

    def scores_and_grads(batch):
        model.zero_grad()
        s = reward.score(model, batch)
        (s.chosen.sum() - 0.5 * s.rejected.sum()).backward()
        return s, {n: p.grad.clone() for n, p in model.named_parameters()}

    packed = collate()
    assert isinstance(packed, ps.SharedPrefixBatch) and packed.row_pairs == [[2], [1], [0], [3, 4]]
    assert packed.input_ids.shape == (4, 12)
    unpacked = collate(packing=False)
    assert unpacked.input_ids.shape == (5, 12)
    with monkeypatch.context() as m:  # every pair in one row: the mask alone keeps them apart
        m.setattr(ps, "assign_rows", one_row)
        single = collate(packing=True)
    assert single.input_ids.shape == (1, 9 + 11 + 12 + 5 + 6)
    plain = collate(prefix_sharing=False)
    assert plain.input_ids.shape[0] == 2 * len(exs)

    expected, expected_grads = scores_and_grads(plain)
    for batch in (packed, unpacked, single):
        s, g = scores_and_grads(batch)
        assert torch.allclose(s.chosen, expected.chosen, atol=1e-5)
        assert torch.allclose(s.rejected, expected.rejected, atol=1e-5)
        assert torch.equal(s.chosen_lengths, expected.chosen_lengths)
        assert torch.equal(s.rejected_lengths, expected.rejected_lengths)
        for name in g:
            assert torch.allclose(g[name], expected_grads[name], atol=1e-5), name
    for i, r in enumerate(PACKABLE):  # and the plain path is the direct computation
        assert expected.chosen[i].item() == pytest.approx(direct_score(model, reward.tokenizer, r["prompt"], r["chosen"]), abs=1e-5)


def test_packing_rows_never_outgrow_one_pair_per_row():
    from mmalign_text.prefix_sharing import assign_rows

    lengths = [30, 5, 12, 30, 18, 7, 25, 1]
    rows = assign_rows(lengths, pack=True)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= max(lengths) for r in rows)
    assert all(r == sorted(r) for r in rows)
    # first-fit decreasing (30, 30, 25, 18, 12, 7, 5, 1): 30 | 30 | 25+5 | 18+12 | 7+1
    assert rows == [[0], [3], [1, 6], [2, 4], [5, 7]]
    assert assign_rows(lengths, pack=False) == [[i] for i in range(len(lengths))]


def test_ld_dpo_weights_tokens_beyond_the_public_length(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    exs = examples(reward)
    with torch.no_grad():
        full = reward.score(model, reward.collate(exs))
        reward.cfg.options["ld_alpha"] = 0.0
        shared = reward.score(model, reward.collate(exs))
        reward.cfg.options["prefix_sharing"] = False
        plain = reward.score(model, reward.collate(exs))
    # alpha 0: each response counts only its first min(|y_w|, |y_l|) tokens
    for i, e in enumerate(exs):
        public = min(len(e.chosen_ids), len(e.rejected_ids))
        expected_c = direct_score(model, reward.tokenizer, RECORDS[i]["prompt"], RECORDS[i]["chosen"], public)
        expected_r = direct_score(model, reward.tokenizer, RECORDS[i]["prompt"], RECORDS[i]["rejected"], public)
        for scores in (shared, plain):
            assert scores.chosen[i].item() == pytest.approx(expected_c, abs=1e-5)
            assert scores.rejected[i].item() == pytest.approx(expected_r, abs=1e-5)
    assert not torch.allclose(full.chosen, shared.chosen)


def test_wpo_pair_weight_matches_a_direct_computation(tokenizer_dir):
    reward, model = make(tokenizer_dir, options={"wpo": True})
    exs = examples(reward)
    with torch.no_grad():
        shared = reward.score(model, reward.collate(exs)).weights
        reward.cfg.options["prefix_sharing"] = False
        plain = reward.score(model, reward.collate(exs)).weights

        def weight(prompt, completion):
            tok = reward.tokenizer
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            logp = model(torch.tensor([p + c])).logits.log_softmax(-1)[0]
            terms = [logp[len(p) - 1 + i, t] - torch.logsumexp(2 * logp[len(p) - 1 + i], -1) for i, t in enumerate(c)]
            return torch.stack(terms).mean().exp().item()

        for i, r in enumerate(RECORDS):
            expected = weight(r["prompt"], r["chosen"]) * weight(r["prompt"], r["rejected"])
            assert shared[i].item() == pytest.approx(expected, rel=1e-4)
            assert plain[i].item() == pytest.approx(expected, rel=1e-4)
