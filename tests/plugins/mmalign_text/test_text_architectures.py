"""The text plugin across architectures: tiny random models built offline from configs (no hub),
windows of 4 tokens against pairs of up to 18, so every sliding, alternating local/global and
chunked pattern matters. Each architecture: every scoring path (plain, prefix-shared one pair a
row, packed; fused head and full logits) equals the model's own forward on each sequence alone
(no custom mask, no padding) to 1e-5 in fp32; DPO loss ln 2 at step 1; 2 engine steps, saved,
reloaded with plain transformers."""

import itertools
import logging
import math

import pytest
import torch

from mmalign.config import load_config
from mmalign_text import layer_masks
from mmalign_text.logps import fused_head_supported
from mmalign_text.prefix_sharing import SharedPrefixBatch
from mmalign_text.records import TextExample
from mmalign_text.reward import TextReward

WINDOW = 4
DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=64)
SLIDING_AND_FULL = ["sliding_attention", "full_attention"]
ARCHITECTURES = {
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64),
    "llama": dict(model_type="llama", **DECODER),
    "qwen2": dict(model_type="qwen2", **DECODER),
    "qwen3": dict(model_type="qwen3", head_dim=16, **DECODER),
    "mistral": dict(model_type="mistral", sliding_window=WINDOW, **DECODER),
    "mistral-eager": dict(model_type="mistral", sliding_window=WINDOW, **DECODER),
    "qwen2-sliding": dict(model_type="qwen2", use_sliding_window=True, sliding_window=WINDOW,
                          max_window_layers=1, **DECODER),  # layer 0 full, layer 1 sliding
    "qwen3-sliding": dict(model_type="qwen3", head_dim=16, use_sliding_window=True, sliding_window=WINDOW,
                          max_window_layers=1, **DECODER),
    "gemma2": dict(model_type="gemma2", head_dim=16, sliding_window=WINDOW, **DECODER),  # eager, soft-capped
    "gemma3-text": dict(model_type="gemma3_text", head_dim=16, sliding_window=WINDOW,
                        layer_types=SLIDING_AND_FULL, **DECODER),
    "gemma3-text-eager": dict(model_type="gemma3_text", head_dim=16, sliding_window=WINDOW,
                              layer_types=SLIDING_AND_FULL, **DECODER),
    "phi3": dict(model_type="phi3", sliding_window=WINDOW, **DECODER),
    "llama4-text-chunked": dict(model_type="llama4_text", head_dim=16, attention_chunk_size=WINDOW,
                                num_local_experts=1, intermediate_size_mlp=64, **DECODER),
}
ATTENTION = {"mistral-eager": "eager", "gemma3-text-eager": "eager"}  # Gemma-2 takes eager only
# What each model gets by default: one mask pattern for all layers, or one per layer type.
EXPECTED_PLAN = {
    "gpt2": "full", "llama": "full", "qwen2": "full", "qwen3": "full",
    "mistral": "sliding 4", "mistral-eager": "sliding 4", "phi3": "sliding 4",
    "qwen2-sliding": "full_attention: full, sliding_attention: sliding 4",
    "qwen3-sliding": "full_attention: full, sliding_attention: sliding 4",
    "gemma2": "full_attention: full, sliding_attention: sliding 4",
    "gemma3-text-eager": "full_attention: full, sliding_attention: sliding 4",
    "gemma3-text": "full_attention: full, sliding_attention: sliding 4",
    "llama4-text-chunked": "chunked 4",
}
# (prompt, chosen, rejected) lengths: prompts and completions longer than the window; pairs of 7
# to 18 tokens, so packing puts two pairs in a row. The last pair has no prompt (its first tokens
# are not scored).
LENGTHS = [(7, 5, 6), (3, 9, 4), (2, 3, 2), (6, 2, 3), (1, 4, 4), (0, 5, 3)]


def model_section(arch: str, tokenizer_dir) -> dict:
    section = {"tiny": dict(ARCHITECTURES[arch]), "tokenizer": str(tokenizer_dir)}
    if arch in ATTENTION:
        section["options"] = {"attn_implementation": ATTENTION[arch]}
    return section


def build(arch: str, tokenizer_dir):
    cfg = load_config(data={"model": model_section(arch, tokenizer_dir)})
    reward = TextReward(cfg.model, cfg.data)
    torch.manual_seed(0)
    return reward, reward.load_policy().eval()


def pair_examples(vocab: int) -> list[TextExample]:
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(4, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [TextExample(ids(p), ids(c), ids(n), f"pair:{i}") for i, (p, c, n) in enumerate(LENGTHS)]


def direct(model, prompt: list[int], completion: list[int]) -> float:
    """sum_t log softmax(logits)[y_t] over the completion, the model's own forward on the sequence
    alone (no mask, no padding); with no prompt, from the second token on."""
    with torch.no_grad():
        logps = model(torch.tensor([prompt + completion])).logits[0].float().log_softmax(-1)
    start = max(len(prompt), 1)
    return sum(logps[t - 1, (prompt + completion)[t]].item() for t in range(start, len(prompt) + len(completion)))


def plan_text(plan) -> str:
    if plan is None:
        return "plain"
    show = lambda p: p.kind if p.kind == "full" else f"{p.kind} {p.size}"  # noqa: E731
    if plan.single is not None:
        return show(plan.single)
    return ", ".join(f"{t}: {show(p)}" for t, p in sorted(plan.by_type.items()))


PATHS = [dict(prefix_sharing=s, packing=p, fused_logps=f)
         for s, p, f in itertools.product([False, True], [False, True], [True, False]) if s or not p]


def score_paths(reward, model, exs, *, grads: bool = False):
    """{path name: (chosen [B], rejected [B], grads or None)} on every scoring path, plus the
    shared batch scored through the plain fallback (rows gathered from it)."""
    out = {}
    for options in PATHS + [dict(prefix_sharing=True, packing=True, fused_logps=True, fallback=True)]:
        fallback = options.pop("fallback", False)
        reward.cfg.options.update(options)
        batch = reward.collate(exs)
        assert isinstance(batch, SharedPrefixBatch) == options["prefix_sharing"]
        model.zero_grad()
        if fallback:
            layer_masks._plans[model] = None
        with torch.set_grad_enabled(grads):
            s = reward.score(model, batch)
            if grads:
                (s.chosen.sum() - 0.5 * s.rejected.sum()).backward()
        layer_masks._plans.pop(model, None)
        name = "+".join(k for k, v in options.items() if v) + ("+plain-fallback" if fallback else "") or "plain"
        out[name] = (s.chosen.detach(), s.rejected.detach(),
                     {n: p.grad.clone() for n, p in model.named_parameters()} if grads else None)
    return out


def score_errors(arch: str, tokenizer_dir) -> tuple[str, dict[str, float]]:
    """(the default mask plan, {scoring path: max |score - direct| over chosen and rejected of
    every pair}). ``python -c`` this for the table of docs and reports."""
    reward, model = build(arch, tokenizer_dir)
    plan = plan_text(layer_masks.mask_plan(model))
    assert model.config.vocab_size == len(reward.tokenizer)
    exs = pair_examples(model.config.vocab_size)
    expected_c = torch.tensor([direct(model, e.prompt_ids, e.chosen_ids) for e in exs])
    expected_r = torch.tensor([direct(model, e.prompt_ids, e.rejected_ids) for e in exs])
    return plan, {name: max((c - expected_c).abs().max().item(), (r - expected_r).abs().max().item())
                  for name, (c, r, _) in score_paths(reward, model, exs).items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_scoring_path_equals_the_models_own_forward(arch, tokenizer_dir):
    assert max(p + max(c, n) for p, c, n in LENGTHS) > 2 * WINDOW
    plan, errors = score_errors(arch, tokenizer_dir)
    assert plan == EXPECTED_PLAN[arch]  # prefix sharing and packing by default, masks per layer type
    assert len(errors) == len(PATHS) + 1
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("arch", ["mistral", "qwen2-sliding", "gemma2", "gemma3-text", "phi3", "llama4-text-chunked"])
def test_windowed_models_give_every_path_the_plain_paths_gradients(arch, tokenizer_dir):
    reward, model = build(arch, tokenizer_dir)
    model.train()  # dropout is 0 in these configs; the training code paths (masks, checkpointing) run
    paths = score_paths(reward, model, pair_examples(model.config.vocab_size), grads=True)
    _, _, expected = paths.pop("fused_logps")  # the plain path with the fused head
    for name, (_, _, grads) in paths.items():
        for param, g in grads.items():
            assert torch.allclose(g, expected[param], atol=1e-5), (name, param)


def test_a_full_causal_mask_would_be_wrong_on_these_models(tokenizer_dir, monkeypatch):
    """The matrix can fail: Mistral scored with one fully causal shared mask (the old behaviour)
    is off by far more than the tolerance."""
    reward, model = build("mistral", tokenizer_dir)
    exs = pair_examples(model.config.vocab_size)
    full = layer_masks.MaskPlan(layer_masks.Pattern("full"), None, additive=False)
    monkeypatch.setitem(layer_masks._plans, model, full)
    with torch.no_grad():
        wrong = reward.score(model, reward.collate(exs)).chosen
    expected = torch.tensor([direct(model, e.prompt_ids, e.chosen_ids) for e in exs])
    assert (wrong - expected).abs().max() > 1e-3


@pytest.mark.parametrize("layer_types", [SLIDING_AND_FULL, ["full_attention", "full_attention"]])
def test_a_pattern_the_plugin_cannot_reproduce_falls_back_to_the_plain_path_logged_once(
        tokenizer_dir, monkeypatch, caplog, layer_types):
    """Gemma-3 with bidirectional attention (EmbeddingGemma's pattern) is none of full, sliding,
    chunked, also where every layer is a full one (whose mask sdpa would skip without the probe's
    padding): the plain path scores it, with one warning however often it is asked."""
    monkeypatch.setattr(layer_masks, "_logged", set())
    section = model_section("gemma3-text", tokenizer_dir)
    section["tiny"].update(use_bidirectional_attention=True, layer_types=layer_types)
    reward = TextReward(*(lambda c: (c.model, c.data))(load_config(data={"model": section})))
    torch.manual_seed(0)
    models = [reward.load_policy().eval() for _ in range(2)]
    exs = pair_examples(models[0].config.vocab_size)
    with caplog.at_level(logging.WARNING, logger="mmalign"):
        for model in models:
            assert layer_masks.mask_plan(model) is None
            with torch.no_grad():
                scores = reward.score(model, reward.collate(exs))
    warnings = [r for r in caplog.records if "prefix sharing and packing are off" in r.getMessage()]
    assert len(warnings) == 1 and "Gemma3ForCausalLM" in warnings[0].getMessage()
    expected = torch.tensor([direct(models[1], e.prompt_ids, e.rejected_ids) for e in exs])
    assert torch.allclose(scores.rejected, expected, atol=1e-5, rtol=0)


def test_soft_capped_gemma2_takes_the_full_logits_path(tokenizer_dir):
    _, model = build("gemma2", tokenizer_dir)
    assert model.config.final_logit_softcapping and not fused_head_supported(model)
    assert model.config._attn_implementation == "eager"  # additive per-layer masks


QUICK_ENGINE_RUNS = ("mistral", "gemma3-text")  # the others in the slow set (about 1 s each, plus imports)


@pytest.mark.parametrize("arch", [a if a in QUICK_ENGINE_RUNS else pytest.param(a, marks=pytest.mark.slow)
                                  for a in ARCHITECTURES])
def test_dpo_trains_two_steps_saves_and_reloads_with_plain_transformers(arch, tokenizer_dir, pairs_file, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from mmalign import train

    cfg = {"output_dir": str(tmp_path / "run"), "seed": 0,
           "model": {"reward": "text", **model_section(arch, tokenizer_dir)},
           "data": {"train": str(pairs_file)}, "loss": {"name": "sigmoid", "beta": 0.1},
           "reference": {"strategy": "copy"},
           "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "log_every": 1, "progress": False}}
    result = train(cfg, log=lambda *a: None)
    assert [h["step"] for h in result.history] == [1, 2]
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert result.history[1]["loss"] != pytest.approx(math.log(2), abs=1e-6)  # it trained
    loaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    saved = load_file(str(result.final_dir / "model.safetensors"))
    state = loaded.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    _, initial = build(arch, tokenizer_dir)
    assert any(not torch.equal(initial.state_dict()[k], v) for k, v in saved.items())
    for key in ("sliding_window", "layer_types", "attention_chunk_size"):
        assert getattr(loaded.config, key, None) == getattr(initial.config, key, None)


@pytest.mark.slow  # several seconds: kept out of the quick set
def test_the_probe_runs_compiled_layers_eagerly(tokenizer_dir):
    """model.options.compile: the probe's forward does not trace the compiled layers (with its
    hooks it did: 76 s of a 152 s first score for the tiny Gemma-3 on CPU, then a recompile)."""
    _, model = build("mistral", tokenizer_dir)
    traced = []

    def backend(graph, example_inputs):  # counts what dynamo hands to a compiler, runs it as is
        traced.append(graph)
        return graph.forward

    for layer in model.model.layers:
        layer.compile(backend=backend, dynamic=True)
    assert layer_masks.mask_plan(model) is not None and traced == []
    with torch.no_grad():
        model(torch.arange(5)[None])
    assert traced  # the layers are compiled, and the count sees it


def test_a_failing_probe_restores_the_config_and_falls_back(tokenizer_dir, monkeypatch):
    """The probe shrinks config.sliding_window while it runs; a model it cannot run gets the
    plain path, with its real window back."""
    _, model = build("mistral", tokenizer_dir)
    windows = []

    def fail(*args, **kwargs):
        windows.append(model.config.sliding_window)
        raise RuntimeError("cannot run on 8 tokens")

    monkeypatch.setattr(model.model, "forward", fail)
    assert layer_masks.mask_plan(model) is None
    assert windows == [layer_masks.PROBE_SIZES["sliding_window"]] and model.config.sliding_window == WINDOW


def test_lora_with_gradient_checkpointing_keeps_the_per_layer_masks(tokenizer_dir):
    """A PEFT-wrapped policy in training mode with gradient checkpointing: the probe sees through
    the wrapper and the checkpointed layers, and the shared scores still equal the model's own."""
    from peft import LoraConfig, get_peft_model

    reward, model = build("gemma3-text", tokenizer_dir)
    model.gradient_checkpointing_enable()
    policy = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).train()
    assert plan_text(layer_masks.mask_plan(policy)) == EXPECTED_PLAN["gemma3-text"]
    exs = pair_examples(model.config.vocab_size)
    scores = reward.score(policy, reward.collate(exs))
    scores.chosen.sum().backward()  # through the checkpointed layers
    model.eval()
    expected = torch.tensor([direct(model, e.prompt_ids, e.chosen_ids) for e in exs])
    assert torch.allclose(scores.chosen.detach(), expected, atol=1e-5, rtol=0)


def test_fsdp2_sharded_policy_keeps_the_per_layer_masks(tokenizer_dir, tmp_path):
    """FSDP2 (layers and root sharded, as accelerate's fsdp config does; one CPU process): the
    probe runs through the root, so it sees gathered weights and leaves the root's first forward
    to the root (a probe of the bare decoder failed on the sharded embedding and turned prefix
    sharing off)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reward, model = build("gemma3-text", tokenizer_dir)
        exs = pair_examples(model.config.vocab_size)
        expected = torch.tensor([direct(model, e.prompt_ids, e.chosen_ids) for e in exs])
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        assert plan_text(layer_masks.mask_plan(model)) == EXPECTED_PLAN["gemma3-text"]
        with torch.no_grad():
            scores = reward.score(model, reward.collate(exs))
        assert torch.allclose(scores.chosen, expected, atol=1e-5, rtol=0)
    finally:
        dist.destroy_process_group()
