"""fp32 master weights for what trains, model.dtype for storage, autocast for compute
(mmalign/precision.py)."""

import math

import pytest
import torch
from conftest import DEMO_DATA, TINY, base_config
from safetensors.torch import load_file

from mmalign.config import load_config
from mmalign.engine import train
from mmalign.errors import ConfigError
from mmalign.precision import mixed_precision, set_master_weights, upcast_trainable

TOKENIZER = DEMO_DATA / "tokenizer"


@pytest.fixture(scope="module")
def bf16_exact_model(tmp_path_factory):
    """A tiny Llama saved in float32 with every weight representable in bfloat16, so that a run
    loading it in bfloat16 and one loading it in float32 start from the same weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    kwargs = dict(TINY)
    config = AutoConfig.for_model(kwargs.pop("model_type"), vocab_size=len(tok),
                                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    path = tmp_path_factory.mktemp("bf16-exact") / "model"
    model.save_pretrained(path)
    return path


def _run(tmp_path, model_path, name, dtype, **train_kw):
    model = {"name_or_path": str(model_path), "tokenizer": str(TOKENIZER), "tiny": None, "dtype": dtype}
    cfg = base_config(tmp_path / name, TOKENIZER, DEMO_DATA / "train.jsonl", model=model,
                      train=dict(max_steps=5, lr=5e-7, lr_scheduler="constant", callbacks=[], **train_kw))
    logs = []
    result = train(load_config(data=cfg), log=logs.append)
    return result, load_file(str(result.final_dir / "model.safetensors")), logs


def _changed_share(after: dict, before: dict) -> float:
    changed = sum(int((after[k].float() != before[k].float()).sum()) for k in before)
    return changed / sum(t.numel() for t in before.values())


def test_bf16_dtype_trains_fp32_master_weights_like_fp32_with_bf16_autocast(tmp_path, bf16_exact_model):
    """The qwen full-DPO setting (dtype bfloat16, lr 5e-7) on the tiny model: 5 AdamW steps move
    99.96% of the weights (0.98% with the optimizer on bf16 weights, master_weights: model_dtype),
    and the run equals float32 weights under train.precision: bf16 bit for bit (measured max
    difference 0.0; asserted to 1e-7)."""
    init = load_file(str(bf16_exact_model / "model.safetensors"))
    bf16, final_bf16, _ = _run(tmp_path, bf16_exact_model, "bf16", "bfloat16")
    _, final_fp32, _ = _run(tmp_path, bf16_exact_model, "fp32", "float32", precision="bf16")
    assert bf16.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert _changed_share(final_bf16, init) > 0.9
    # final/ holds the fp32 master weights (the training dtype, as TRL saves): documented in
    # docs/configuration.md; saving them in bf16 would round most of these updates away
    assert {t.dtype for t in final_bf16.values()} == {torch.float32}
    assert max(float((final_bf16[k] - final_fp32[k]).abs().max()) for k in final_bf16) <= 1e-7


@pytest.mark.slow
def test_pure_bf16_training_is_an_explicit_option_that_warns(tmp_path, bf16_exact_model):
    init = load_file(str(bf16_exact_model / "model.safetensors"))
    _, final, logs = _run(tmp_path, bf16_exact_model, "pure", "bfloat16", master_weights="model_dtype")
    assert sum("master_weights is model_dtype" in line for line in logs) == 1
    assert {t.dtype for t in final.values()} == {torch.bfloat16}
    assert _changed_share(final, init) < 0.1  # the rounding the default avoids


def test_master_weights_upcast_only_trainable_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).bfloat16()
    model[0].requires_grad_(False)
    assert upcast_trainable(model) == 2
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32
    logs = []
    set_master_weights(torch.nn.Linear(2, 2).bfloat16(), "model_dtype", logs.append)
    assert len(logs) == 1 and "bfloat16" in logs[0]


@pytest.mark.parametrize("dtype, precision, expected", [
    ("float32", "no", "no"), ("bfloat16", "no", "bf16"), ("float16", "no", "fp16"),
    ("float32", "bf16", "bf16"), ("bfloat16", "bf16", "bf16"), ("auto", "no", "no")])
def test_compute_precision_follows_precision_then_dtype(dtype, precision, expected):
    assert mixed_precision(dtype, precision) == expected


def test_conflicting_half_precisions_are_a_config_error():
    with pytest.raises(ConfigError, match="disagree"):
        mixed_precision("bfloat16", "fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 autocast exists on GPU")
def test_fp16_on_cpu_is_refused_before_training(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, model={"dtype": "float16"})
    with pytest.raises(ConfigError, match="fp16 compute"):
        train(load_config(data=cfg), log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_lora_on_a_bf16_base_trains_fp32_adapters(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, model={"dtype": "bfloat16", "lora": {"r": 4}},
                      train={"max_steps": 1, "callbacks": []})
    result = train(load_config(data=cfg), log=lambda *a: None)
    adapter = load_file(str(result.final_dir / "adapter_model.safetensors"))
    base = load_file(str(result.final_dir / "base_model" / "model.safetensors"))
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}
    assert {t.dtype for t in base.values()} == {torch.bfloat16}  # frozen: model.dtype
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_resume_restores_fp32_master_weights_exactly(tmp_path, bf16_exact_model):
    """A checkpoint of a bf16-dtype run holds fp32 weights, and load_weights (resume) brings them
    back bit for bit instead of rounding them to model.dtype."""
    from mmalign_text.reward import TextReward

    cfg = load_config(data={"model": {"name_or_path": str(bf16_exact_model), "tokenizer": str(TOKENIZER),
                                      "dtype": "bfloat16"}})
    reward = TextReward(cfg.model, cfg.data)
    trained = reward.load_policy()
    upcast_trainable(trained)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1e-6)  # below bf16's resolution
    reward.save(trained, tmp_path / "ckpt")
    fresh = reward.load_policy()
    upcast_trainable(fresh)
    reward.load_weights(fresh, tmp_path / "ckpt")
    for (name, a), b in zip(trained.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name


def test_eval_and_score_compute_as_training_did(tmp_path, tokenizer_dir, pairs_file):
    """`mmalign eval` / `mmalign score` on a model.dtype bfloat16 run: the policy's fp32 master
    weights (not rounded to bf16), the reference copy upcast as in training, bf16 autocast: the
    held-out metrics equal training's final evaluation (before: margin 0.10494 vs 0.10529)."""
    import json

    from conftest import write_jsonl

    from mmalign_inspect.trained_run import evaluate_config, score_config

    held_out = write_jsonl(tmp_path / "held_out.jsonl",
                           [json.loads(x) for x in pairs_file.read_text().splitlines()[:8]])
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, data={"eval": str(held_out)},
                      model={"dtype": "bfloat16"}, train={"max_steps": 2, "lr": 1e-2})
    during = {k: v for k, v in train(load_config(data=cfg), log=lambda *a: None).history[-1].items()
              if k.startswith("eval/")}
    after = evaluate_config(load_config(data=cfg))
    assert during["eval/margin"] != 0 and {k: after[k] for k in during} == pytest.approx(during, abs=1e-7)
    margins = [row["margin"] for row in score_config(load_config(data=cfg))]
    assert sum(margins) / len(margins) == pytest.approx(during["eval/margin"], abs=1e-6)
