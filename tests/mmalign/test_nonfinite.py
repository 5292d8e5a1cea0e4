"""The non-finite stop message names the checkpoint --resume would take."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from mmalign import checkpoint as ckpt
from mmalign.nonfinite import all_finite, message


def _save(root, step):
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p])

    def model(d):
        d.mkdir()
        save_file({"w": torch.ones(2)}, str(d / "w.safetensors"))

    return ckpt.save_checkpoint(root, step, save_model=model, optimizer=opt,
                                scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                                data_generator=torch.Generator(), keep_last=5,
                                trainer_state={"step": step, "consumed": 0}, identity_json='{"run_id": "r"}')


def test_the_message_passes_over_a_damaged_or_tampered_newest_checkpoint(tmp_path):
    good = _save(tmp_path / "checkpoints", 2)
    damaged = _save(tmp_path / "checkpoints", 4)
    (damaged / "optimizer.safetensors").write_bytes(b"cut")
    assert f"the last checkpoint, {good}, is intact" in message("loss", 5, tmp_path)
    (damaged / "planted.pkl").write_bytes(b"\x80\x04K\x01.")  # verify_checkpoint raises for this one
    assert f"the last checkpoint, {good}, is intact" in message("loss", 5, tmp_path)


def test_all_finite_sees_one_nan_and_a_sum_that_overflows():
    ok = [torch.ones(4), torch.full((3,), 3e38)]  # the sum overflows to inf, every element is finite
    assert all_finite(ok)
    bad = [torch.ones(4), torch.tensor([1.0, float("nan")])]
    assert not all_finite(bad)
