"""Numerical guards, tested by injection: a loss registered through a pluggy plugin object (as a
user's plugin would be) returns a NaN loss, or a finite loss with an infinite gradient, on one
chosen call. The engine has no test-only path: train.on_nonfinite (stop | skip) is what a user sets.
"""

from __future__ import annotations

import pytest
import torch
from conftest import base_config
from train_processes import (
    assert_bitwise_equal,
    checkpoint_names,
    weights,
    write_config,
)

import mmalign
from mmalign import train
from mmalign.cli import main
from mmalign.engine import TrainingError
from mmalign.hookspecs import hookimpl
from mmalign.losses import LossSpec
from mmalign_losses import sigmoid


class NonFiniteOnce:
    """Registers loss 'dpo_then_broken': DPO, except on call number ``at`` (one call per
    micro-batch, so with no accumulation: optimizer step ``at``), where the loss is NaN
    (``kind="loss"``) or finite with an infinite gradient (``kind="gradient"``)."""

    def __init__(self, at: int, kind: str):
        self.at, self.kind, self.calls = at, kind, 0

    def loss(self, pc, pr, rc, rr, *, beta):
        out = sigmoid(pc, pr, rc, rr, beta=beta)
        if not pc.requires_grad:  # a config check's dry run of the loss, not a training step
            return out
        self.calls += 1
        if self.calls != self.at:
            return out
        if self.kind == "loss":
            return out * float("nan")
        return out + torch.sqrt(pc - pc.detach())  # adds 0, but d sqrt(u)/du at u = 0 is inf

    @hookimpl
    def mmalign_register_losses(self, register):
        register(LossSpec("dpo_then_broken", self.loss, summary="test: DPO, broken once"))


@pytest.fixture
def install():
    registrations = []

    def install(plugin) -> None:
        registrations.append(mmalign.register(plugin, name="test-nonfinite"))

    yield install
    for registration in registrations:
        registration.remove()


def config(tmp_path, tokenizer_dir, pairs_file, name="run", **train_keys):
    cfg = base_config(tmp_path / name, tokenizer_dir, pairs_file, loss={"name": "dpo_then_broken"},
                      train={"callbacks": [], "save_every": 2, "max_steps": 4, **train_keys})
    return cfg


def metric_rows(run_dir):
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_nan_loss_stops_and_leaves_the_last_checkpoint_intact(install, tmp_path, tokenizer_dir, pairs_file):
    install(NonFiniteOnce(at=999, kind="loss"))  # never breaks: the reference run
    clean = train(config(tmp_path, tokenizer_dir, pairs_file, "clean"), log=lambda *a: None)
    install(NonFiniteOnce(at=3, kind="loss"))
    cfg = config(tmp_path, tokenizer_dir, pairs_file)
    with pytest.raises(TrainingError) as err:
        train(cfg, log=lambda *a: None)
    run_dir = tmp_path / "run" / "run"
    message = str(err.value)
    assert "Non-finite loss at step 3" in message
    assert f"{run_dir / 'checkpoints' / 'step-0000002'}, is intact" in message and "--resume" in message
    assert "train.on_nonfinite: skip" in message  # the fix is named
    assert checkpoint_names(run_dir) == ["step-0000002"] and not (run_dir / "final").exists()
    assert [r["step"] for r in metric_rows(run_dir)] == [1, 2]
    # intact = exactly what a run that never met the NaN saved at step 2
    clean_step2 = clean.output_dir / "checkpoints" / "step-0000002" / "model"
    assert_bitwise_equal(weights(run_dir / "checkpoints" / "step-0000002" / "model"), weights(clean_step2))


def test_infinite_gradient_is_exit_code_3_with_a_message(install, tmp_path, tokenizer_dir, pairs_file, capsys):
    install(NonFiniteOnce(at=2, kind="gradient"))
    path = write_config(tmp_path / "c.yaml", config(tmp_path, tokenizer_dir, pairs_file))
    code = main(["train", str(path)])
    err = capsys.readouterr().err
    assert code == 3
    assert "Non-finite gradient norm at step 2" in err and "no intact checkpoint was written yet" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_skip_drops_the_update_and_counts_it(install, tmp_path, tokenizer_dir, pairs_file, kind):
    install(NonFiniteOnce(at=3, kind=kind))
    cfg = config(tmp_path, tokenizer_dir, pairs_file, on_nonfinite="skip", save_every=1, keep_last=9)
    lines = []
    result = train(cfg, log=lines.append)
    rows = metric_rows(result.output_dir)
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1]
    assert "loss" not in rows[2] and all(k in rows[3] for k in ("loss", "rewards/margins"))
    assert any("step 3: non-finite" in line and "update skipped" in line for line in lines)
    ckpts = result.output_dir / "checkpoints"
    step = {s: weights(ckpts / f"step-000000{s}" / "model") for s in (2, 3, 4)}
    assert all(torch.equal(step[2][k], step[3][k]) for k in step[2])  # no update at step 3
    assert not all(torch.equal(step[3][k], step[4][k]) for k in step[3])  # training went on
    assert all(torch.isfinite(v).all() for v in step[4].values())
