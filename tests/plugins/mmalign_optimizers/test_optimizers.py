"""``train.optimizer`` (plugins/mmalign_optimizers, mmalign/optimizers.py): bitsandbytes' 8-bit
AdamW trains, stores its moments in one byte per value (the checkpoint's optimizer state about 4x
smaller than AdamW's), resumes exactly; without bitsandbytes it is refused before anything is
written. A user's optimizer, registered as a plugin, trains, checkpoints and resumes; an unknown
name is refused."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import TINY, base_config
from safetensors import safe_open

import mmalign
from mmalign.errors import ConfigError, RegistryError
from mmalign.hookspecs import hookimpl

WIDER = {**TINY, "hidden_size": 128, "intermediate_size": 256}  # matrices above bitsandbytes' 4096-value floor


def quiet(*_):
    pass


def untimed(history):
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]


def config(tmp_path, tokenizer_dir, pairs_file, optimizer, steps=4):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file,
                      train={"optimizer": optimizer, "max_steps": steps, "save_every": 2, "lr_scheduler": "constant"})
    cfg["model"]["tiny"] = dict(WIDER)
    return cfg


def optimizer_state_bytes(run_dir) -> tuple[int, set]:
    path = run_dir / "checkpoints" / "step-0000004" / "optimizer.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]
    return sum(t.numel() * t.element_size() for t in tensors), {str(t.dtype) for t in tensors}


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw_8bit"])  # paged: no paging on CPU
def test_an_8bit_adamw_trains_with_a_quarter_of_the_state(tmp_path, tokenizer_dir, pairs_file, optimizer):
    pytest.importorskip("bitsandbytes")
    plain = mmalign.train(config(tmp_path / "plain", tokenizer_dir, pairs_file, "adamw"), log=quiet)
    eight = mmalign.train(config(tmp_path / "eight", tokenizer_dir, pairs_file, optimizer), log=quiet)
    assert eight.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert eight.history[-1]["loss"] < eight.history[0]["loss"]
    # the same direction as AdamW, not the same numbers: the moments are quantized
    assert eight.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], abs=0.05)
    adamw_bytes, _ = optimizer_state_bytes(plain.output_dir)
    eight_bytes, dtypes = optimizer_state_bytes(eight.output_dir)
    assert "torch.uint8" in dtypes and eight_bytes < adamw_bytes / 2.5, (eight_bytes, adamw_bytes)


def test_an_8bit_run_resumes_exactly(tmp_path, tokenizer_dir, pairs_file):
    pytest.importorskip("bitsandbytes")
    straight = mmalign.train(config(tmp_path / "a", tokenizer_dir, pairs_file, "adamw_8bit"), log=quiet)
    cut = config(tmp_path / "b", tokenizer_dir, pairs_file, "adamw_8bit", steps=2)
    mmalign.train(cut, log=quiet)
    cut["train"]["max_steps"] = 4
    assert untimed(mmalign.train(cut, resume=True, log=quiet).history) == untimed(straight.history)


def test_without_bitsandbytes_an_8bit_optimizer_is_refused_before_anything_is_written(
        tmp_path, tokenizer_dir, pairs_file, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.optimizer.*mmalign\[bitsandbytes\]") as caught:
        mmalign.train(config(tmp_path, tokenizer_dir, pairs_file, "adamw_8bit"), log=quiet)
    assert caught.value.exit_code == 2 and not (tmp_path / "run").exists()


class Momentum:
    """A user's optimizer, registered as a plugin would: SGD with momentum (state of its own)."""

    @hookimpl
    def mmalign_register_optimizers(self, register):
        register("sgd_momentum", lambda params, train: torch.optim.SGD(params, lr=train.lr * 100, momentum=0.9))


def test_a_registered_optimizer_trains_checkpoints_and_resumes_exactly(tmp_path, tokenizer_dir, pairs_file):
    with mmalign.register(Momentum(), name="test-momentum"):
        straight = mmalign.train(config(tmp_path / "a", tokenizer_dir, pairs_file, "sgd_momentum"), log=quiet)
        cut = config(tmp_path / "b", tokenizer_dir, pairs_file, "sgd_momentum", steps=2)
        mmalign.train(cut, log=quiet)
        cut["train"]["max_steps"] = 4
        resumed = mmalign.train(cut, resume=True, log=quiet)
    assert straight.history[-1]["loss"] < straight.history[0]["loss"]
    assert untimed(resumed.history) == untimed(straight.history)
    path = straight.output_dir / "checkpoints" / "step-0000004" / "optimizer.safetensors"
    with safe_open(str(path), "pt") as f:
        assert any(key.endswith("momentum_buffer") for key in f.keys())


def test_an_unknown_optimizer_is_refused_with_the_registered_ones(tmp_path, tokenizer_dir, pairs_file):
    with pytest.raises(RegistryError, match=r"Unknown optimizer 'lion' \(config key 'train.optimizer'\)\. "
                                            r"Registered optimizers: adamw, adamw_8bit"):
        mmalign.train(config(tmp_path, tokenizer_dir, pairs_file, "lion"), log=quiet)
    assert not (tmp_path / "run").exists()
