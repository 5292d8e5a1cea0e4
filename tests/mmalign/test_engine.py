"""The training loop end to end on a tiny Llama: metrics, checkpoints, final model, exact resume,
gradient accumulation, LoRA and SFT."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import base_config, write_jsonl
from mmalign import train
from mmalign.errors import ConfigError, DataError

CONTRACT = {"step", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
            "rewards/accuracies", "lr"}


def rows(run_dir):
    """metrics.jsonl's rows without the wall-clock ``time/*`` keys (they differ between runs)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dpo_run_writes_the_contract(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file,
                      train={"max_steps": 4, "save_every": 2, "keep_last": 1},
                      data={"eval_size": 8})
    result = train(cfg, log=lambda *a: None)
    out = result.output_dir
    metrics = rows(out)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    assert all(CONTRACT <= set(r) for r in metrics)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert metrics[0]["rewards/accuracies"] == 0.0 and metrics[0]["rewards/margins"] == 0.0
    assert "eval/reward_accuracy" in metrics[-1]
    assert (out / "config.yaml").exists() and (out / "training_curves.png").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000004"]  # keep_last 1
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None


def test_resume_gives_identical_weights_and_metrics(tmp_path, tokenizer_dir, pairs_file):
    common = {"lr_scheduler": "constant", "save_every": 3, "log_every": 1}
    straight = base_config(tmp_path / "a", tokenizer_dir, pairs_file, train={**common, "max_steps": 6})
    train(straight, log=lambda *a: None)
    part = base_config(tmp_path / "b", tokenizer_dir, pairs_file, train={**common, "max_steps": 3})
    train(part, log=lambda *a: None)
    part["train"]["max_steps"] = 6
    train(part, resume=True, log=lambda *a: None)
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert rows(a) == rows(b)


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path, tokenizer_dir, pairs_file):
    one = base_config(tmp_path / "one", tokenizer_dir, pairs_file,
                      train={"max_steps": 1, "batch_size": 4, "max_grad_norm": 0.0})
    two = base_config(tmp_path / "two", tokenizer_dir, pairs_file,
                      train={"max_steps": 1, "batch_size": 2, "gradient_accumulation_steps": 2,
                             "max_grad_norm": 0.0})
    train(one, log=lambda *a: None)
    train(two, log=lambda *a: None)
    w1 = load_file(str(tmp_path / "one" / "run" / "final" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "run" / "final" / "model.safetensors"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    assert rows(tmp_path / "one" / "run")[0]["grad_norm"] == pytest.approx(
        rows(tmp_path / "two" / "run")[0]["grad_norm"], rel=1e-4)


def test_lora_run_uses_disabled_adapters_and_saves_an_adapter(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"lr": 1e-2, "max_steps": 6})
    cfg["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.1}
    result = train(cfg, log=lambda *a: None)
    metrics = rows(result.output_dir)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # dropout disabled: exact
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (result.final_dir / "adapter_model.safetensors").exists()
    assert not (result.final_dir / "model.safetensors").exists()


def test_sft_run(tmp_path, tokenizer_dir):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "great kaka", "completion": "superb mimi"}] * 8)
    cfg = base_config(tmp_path, tokenizer_dir, data, loss={"name": "sft"},
                      train={"max_steps": 5, "lr": 1e-2}, data={"duplicates": "keep"})
    metrics = rows(train(cfg, log=lambda *a: None).output_dir)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert "rewards/rejected" not in metrics[0]


def test_unknown_loss_option_is_a_config_error(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, loss={"options": {"smoothing": 0.1}})
    with pytest.raises(ConfigError, match="label_smoothing"):
        train(cfg, log=lambda *a: None)


def test_bad_data_fails_before_anything_is_written(tmp_path, tokenizer_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3)
    with data.open("a") as f:
        f.write('{"prompt": "a", "chosen": ""  , "rejected": "c"}\n')
    cfg = base_config(tmp_path, tokenizer_dir, data)
    with pytest.raises(DataError, match=r"d.jsonl:4: \"chosen\" is empty"):
        train(cfg, log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_too_little_data(tmp_path, tokenizer_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(DataError, match="fewer than one optimizer step"):
        train(base_config(tmp_path, tokenizer_dir, data), log=lambda *a: None)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tokenizer_dir, pairs_file):
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        train(base_config(tmp_path, tokenizer_dir, pairs_file), resume=True, log=lambda *a: None)
