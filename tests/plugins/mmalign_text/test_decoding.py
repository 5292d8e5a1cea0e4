"""The lean decode loop (``model.options.generation: fast``) against HF ``generate``: greedy output
token for token (EOS per row, min_new_tokens) on Llama and on sliding-window, hybrid and
learned-position architectures; draws follow the distribution HF's temperature and top-p warpers
define; the log-probs it samples from equal the plugin's scores of the samples; the same generator
state gives the same samples; models it cannot reproduce fall back to generate."""

import logging
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY
from mmalign.config import load_config
from mmalign.errors import ConfigError
from mmalign_text import decoding, sampling
from mmalign_text.decoding import decode, fast_path_problem
from mmalign_text.reward import TextReward
from mmalign_text.sampling import TextGroup, generate_ids

DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=64)
ARCHITECTURES = {
    "llama": dict(TINY, tie_word_embeddings=False),  # tied, a random model repeats its last token
    "mistral": dict(model_type="mistral", sliding_window=4, **DECODER),  # window < prompt + completion
    "gemma3-text": dict(model_type="gemma3_text", head_dim=16, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention"], **DECODER),
    "qwen3": dict(model_type="qwen3", head_dim=16, **DECODER),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64, tie_word_embeddings=False),
}
PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50], [1, 60, 61, 62]]  # left padding in every batch


def make(tokenizer_dir, tiny=TINY, **options):
    cfg = load_config(data={"model": {"tiny": dict(tiny), "tokenizer": str(tokenizer_dir), "options": options},
                            "data": {"max_length": 64}})
    torch.manual_seed(0)
    reward = TextReward(cfg.model, cfg.data)
    return reward, reward.load_policy().eval()


def both(model, tokenizer, **options):
    """(fast, hf) generate_ids with the same options."""
    return [generate_ids(model, tokenizer, PROMPTS, generation=g, **options) for g in ("fast", "hf")]


def ending_early(model, tokenizer):
    """A tokenizer stand-in whose EOS is the first token greedy decoding gives prompt 0 after step
    1 that it did not give before, so that row ends there and the others run on (or end where they
    meet it); and that step."""
    ids = generate_ids(model, tokenizer, PROMPTS, max_new_tokens=12, seed=0, greedy=True, generation="hf")[0]
    step = next(t for t in range(2, 12) if ids[t] not in ids[:t])
    return SimpleNamespace(eos_token_id=ids[step], pad_token_id=tokenizer.pad_token_id), step


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_decoding_equals_hf_generate_token_for_token(tokenizer_dir, arch):
    reward, model = make(tokenizer_dir, ARCHITECTURES[arch])
    assert fast_path_problem(model) is None
    tok, step = ending_early(model, reward.tokenizer)
    fast, hf = both(model, tok, max_new_tokens=16, seed=0, greedy=True, repeats=2)
    assert fast == hf and len(fast) == 6
    assert fast[0][-1] == tok.eos_token_id and len(fast[0]) == step + 1  # EOS ends a row, the rest run on
    assert max(len(ids) for ids in fast) == 16 and len(set(fast[2])) > 2


def test_min_new_tokens_of_the_generation_config_holds_eos_back_as_generate_does(tokenizer_dir):
    reward, model = make(tokenizer_dir, ARCHITECTURES["llama"])
    tok, step = ending_early(model, reward.tokenizer)
    model.generation_config.min_new_tokens = step + 3  # as the grpo benchmark suppresses EOS
    fast, hf = both(model, tok, max_new_tokens=16, seed=0, greedy=True)
    assert fast == hf and len(fast[0]) > step + 1  # row 0 ran past the EOS it met at ``step``
    assert all(tok.eos_token_id not in ids[:step + 3] for ids in fast)


def test_draws_follow_the_distribution_generate_samples_from():
    """Token frequencies of 200,000 draws equal softmax of the scores after HF's own temperature
    and top-p warpers (4.5 standard errors); top-p removes exactly the tokens HF removes."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0, -float("inf"), 1.5]])
    for temperature, top_p in ((1.0, 1.0), (0.7, 1.0), (1.3, 0.8)):
        expected = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores)) \
            if top_p < 1 else TemperatureLogitsWarper(temperature)(None, scores)
        tokens, _ = decoding.pick(scores.expand(200_000, -1), torch.Generator().manual_seed(0), temperature=temperature,
                                  top_p=top_p, greedy=False, with_logprobs=False)
        freq = torch.bincount(tokens, minlength=8) / 200_000
        assert (freq - expected.softmax(-1)[0]).abs().max() < 0.005, (temperature, top_p)
        assert freq[6] == 0 and (top_p == 1 or (freq[expected[0] == -float("inf")] == 0).all())
    random = torch.randn(64, 50, generator=torch.Generator().manual_seed(1)) * 3
    for top_p in (0.1, 0.5, 0.9):
        assert torch.equal(decoding.top_p_filter(random, top_p), TopPLogitsWarper(top_p)(None, random))


def test_sampled_rows_end_at_eos_and_the_repeats_of_a_prompt_differ(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    tok = reward.tokenizer
    tokens, _, _ = decode(model, PROMPTS, 4, max_new_tokens=40, eos=tok.eos_token_id, pad=tok.pad_token_id,
                       generator=torch.Generator().manual_seed(5))
    ended = [row.index(tok.eos_token_id) for row in tokens.tolist() if tok.eos_token_id in row]
    assert ended and all(set(row[end + 1:]) <= {tok.pad_token_id} for row, end in
                         zip([r for r in tokens.tolist() if tok.eos_token_id in r], ended))
    assert len({tuple(row) for row in tokens.tolist()}) == 12


def test_the_loop_samples_from_the_models_own_log_probs(tokenizer_dir):
    """At temperature 1 and top_p 1 the probability each token was drawn with is the model's:
    the plugin's per-token scores of the samples (its training forward) equal them to 1e-5."""
    reward, model = make(tokenizer_dir)
    tok = reward.tokenizer
    generator = torch.Generator().manual_seed(3)
    tokens, logprobs, _ = decode(model, PROMPTS, 3, max_new_tokens=20, eos=tok.eos_token_id, pad=tok.pad_token_id,
                              generator=generator, with_logprobs=True)
    groups = [TextGroup(p, [sampling.cut(tokens[i * 3 + j].tolist(), tok.eos_token_id) for j in range(3)], "")
              for i, p in enumerate(PROMPTS)]
    with torch.no_grad():
        scores = reward.score(model, reward.collate(groups), per_unit=True)
    drawn = logprobs.view(3, 3, -1)[..., :scores.unit_scores.shape[-1]]
    assert torch.equal(scores.unit_mask.bool(), drawn != 0)
    assert torch.allclose(scores.unit_scores, drawn, atol=1e-5)


def test_each_token_carries_the_entropy_it_was_drawn_from(tokenizer_dir):
    """H_t = -sum_v p log p of softmax(logits / T) at the position that drew token t: the first
    token's against the model's own forward on the prompt, every later one against the forward
    on prompt + the tokens before it; 0 after EOS; greedy decoding records none."""
    reward, model = make(tokenizer_dir)
    tok = reward.tokenizer
    decoded = decode(model, PROMPTS, 2, max_new_tokens=6, eos=tok.eos_token_id, pad=tok.pad_token_id,
                     generator=torch.Generator().manual_seed(4), temperature=0.7, with_entropy=True)
    with torch.no_grad():
        for row, tokens in enumerate(decoded.tokens.tolist()):
            prompt, new = PROMPTS[row // 2], sampling.cut(tokens, tok.eos_token_id)
            logits = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1:len(prompt) - 1 + len(new)]
            p = (logits.float() / 0.7).softmax(-1)
            expected = -(p * p.log()).sum(-1)
            assert torch.allclose(decoded.entropy[row, :len(new)], expected, atol=1e-4)
            assert not decoded.entropy[row, len(new):].any()
    greedy = decode(model, PROMPTS, 1, max_new_tokens=4, eos=tok.eos_token_id, pad=tok.pad_token_id,
                    greedy=True, with_entropy=True)
    assert greedy.entropy is None


def test_the_same_generator_state_gives_the_same_samples(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    tok = reward.tokenizer

    def draw(seed):
        return decode(model, PROMPTS, 4, max_new_tokens=16, eos=tok.eos_token_id, pad=tok.pad_token_id,
                      generator=torch.Generator().manual_seed(seed))[0]

    state = torch.random.get_rng_state()
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not touched


def test_models_the_loop_cannot_reproduce_fall_back_to_generate_logged_once(tokenizer_dir, monkeypatch, caplog):
    monkeypatch.setattr(sampling, "_logged", set())
    reward, model = make(tokenizer_dir)
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty = 1.3" in fast_path_problem(model)
    with caplog.at_level(logging.WARNING, logger="mmalign"):
        fast, hf = both(model, reward.tokenizer, max_new_tokens=8, seed=2)
        both(model, reward.tokenizer, max_new_tokens=8, seed=2)
    assert fast == hf
    assert len([r for r in caplog.records if "generation: fast is off" in r.getMessage()]) == 1


def test_the_generation_option_is_checked(tokenizer_dir):
    with pytest.raises(ConfigError, match="model.options.generation must be one of fast, hf"):
        make(tokenizer_dir, generation="vllm")
    reward, model = make(tokenizer_dir, generation="hf")
    samples = reward.sample(model, [{"prompt": "great kaka"}], 2, torch.Generator().manual_seed(0), max_new_tokens=4)
    greedy = reward.sample(model, [{"prompt": "great kaka"}], 2, torch.Generator(), max_new_tokens=4, temperature=0)
    reward_fast, _ = make(tokenizer_dir)
    again = reward_fast.sample(model, [{"prompt": "great kaka"}], 2, torch.Generator(), max_new_tokens=4, temperature=0)
    assert len(samples.responses[0]) == 2 and greedy.trajectory == again.trajectory


def test_a_lora_policy_decodes_through_its_adapters(tokenizer_dir):
    cfg = load_config(data={"model": {"tiny": ARCHITECTURES["llama"], "tokenizer": str(tokenizer_dir),
                                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}})
    torch.manual_seed(0)
    reward = TextReward(cfg.model, cfg.data)
    model = reward.load_policy().eval()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # adapters that change the output
    fast, hf = both(model, reward.tokenizer, max_new_tokens=10, seed=0, greedy=True)
    with model.disable_adapter():
        base = generate_ids(model, reward.tokenizer, PROMPTS, max_new_tokens=10, seed=0, greedy=True)
    assert fast == hf and fast != base
