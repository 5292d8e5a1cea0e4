"""The built-in optimizers plugin (entry point ``optimizers`` of the ``mmalign`` group):
``train.optimizer``, with the names Hugging Face's ``TrainingArguments.optim`` uses.

- ``adamw``: PyTorch's AdamW (the default).
- ``adamw_8bit``: bitsandbytes' 8-bit AdamW, which keeps each moment in one byte per value with
  block-wise scales (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization") instead
  of four: AdamW's state falls from 8 to about 2 bytes per trained parameter. The weights stay
  float32 (mmalign's master weights).
- ``paged_adamw_8bit``, ``paged_adamw_32bit``: bitsandbytes' paged forms, whose state is paged to
  CPU memory when a GPU runs short (on a CPU they run unpaged).

bitsandbytes is an optional extra (``pip install 'mmalign[bitsandbytes]'``); its optimizers are
refused under FSDP2 (untested on sharded parameters).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from mmalign.hookspecs import hookimpl

BITSANDBYTES = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit", "paged_adamw_32bit": "PagedAdamW32bit"}


def _settings(train: Any) -> dict:
    return {"lr": train.lr, "weight_decay": train.weight_decay, "betas": tuple(train.adam_betas)}


def adamw(params: list, train: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, **_settings(train))


def bitsandbytes_adamw(class_name: str, params: list, train: Any) -> torch.optim.Optimizer:
    import bitsandbytes

    return getattr(bitsandbytes.optim, class_name)(params, **_settings(train))


@hookimpl
def mmalign_register_optimizers(register) -> None:
    register("adamw", adamw)
    for name, class_name in BITSANDBYTES.items():
        register(name, partial(bitsandbytes_adamw, class_name), requires=("bitsandbytes",),
                 install="pip install 'mmalign[bitsandbytes]'", sharded=False)
