"""Learning-rate schedules: transformers' ``get_scheduler`` (linear warm-up from 0, then linear
decay, cosine decay or constant), as TRL and the diffusers scripts use them."""

from __future__ import annotations

import torch

_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int):
    """``train.lr_scheduler`` -> a LambdaLR from ``transformers.get_scheduler``."""
    from transformers import get_scheduler

    return get_scheduler(_NAMES[kind], optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=total_steps)
