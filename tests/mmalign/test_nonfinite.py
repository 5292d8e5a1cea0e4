"""The non-finite stop message names the checkpoint --resume would take; the finiteness check."""

from __future__ import annotations

from pathlib import Path

import torch

from mmalign.nonfinite import all_finite, message


def test_the_message_names_the_checkpoint_to_resume_from_or_says_there_is_none():
    last = Path("run/checkpoints/step-0000002")
    assert f"the last checkpoint, {last}, is intact" in message("loss", 5, last)
    assert "no intact checkpoint was written yet" in message("loss", 5, None)
    assert "skip cannot undo" in message("weights after the update", 5, last)


def test_all_finite_sees_one_nan_and_a_sum_that_overflows():
    ok = [torch.ones(4), torch.full((3,), 3e38)]  # the sum overflows to inf, every element is finite
    assert all_finite(ok)
    bad = [torch.ones(4), torch.tensor([1.0, float("nan")])]
    assert not all_finite(bad)
