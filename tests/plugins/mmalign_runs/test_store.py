"""The checkpoint the local run store names in error messages is the one --resume would take."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from mmalign_runs import checkpoint as ckpt
from mmalign_runs.checkpoint_verify import last_intact


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


def test_the_last_intact_checkpoint_passes_over_a_damaged_or_tampered_newest_checkpoint(tmp_path):
    good = _save(tmp_path / "checkpoints", 2)
    damaged = _save(tmp_path / "checkpoints", 4)
    (damaged / "optimizer.safetensors").write_bytes(b"cut")
    assert last_intact(tmp_path / "checkpoints") == good
    (damaged / "planted.pkl").write_bytes(b"\x80\x04K\x01.")  # verify_checkpoint raises for this one
    assert last_intact(tmp_path / "checkpoints") == good
