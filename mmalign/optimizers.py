"""``train.optimizer``: AdamW in PyTorch (``adamw``, the default) or bitsandbytes' 8-bit AdamW
(``adamw_8bit``; ``paged_adamw_8bit`` and ``paged_adamw_32bit`` page their state to CPU memory when
a GPU runs short), the names Hugging Face's ``TrainingArguments.optim`` uses. The 8-bit optimizers
keep each moment in one byte per value with block-wise scales (Dettmers et al. 2022, "8-bit
Optimizers via Block-wise Quantization") instead of four: AdamW's state falls from 8 to about 2
bytes per trained parameter. The weights stay float32 (mmalign's master weights)."""

from __future__ import annotations

import importlib.util
from typing import Any, Iterable

import torch

BITSANDBYTES = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit", "paged_adamw_32bit": "PagedAdamW32bit"}
OPTIMIZERS = ("adamw", *BITSANDBYTES)


def check_optimizer(name: str, where: str) -> None:
    """Before anything loads: a bitsandbytes optimizer needs bitsandbytes (found, not imported)."""
    from mmalign.validation import fail

    if name in BITSANDBYTES and importlib.util.find_spec("bitsandbytes") is None:
        raise fail(where, "train.optimizer", f"is '{name}', which needs bitsandbytes: `pip install "
                                             f"'mmalign[bitsandbytes]'`, or use train.optimizer: adamw.")


def make_optimizer(train: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``train.optimizer`` names over ``params``, with train.lr, weight_decay and adam_betas."""
    kwargs = {"lr": train.lr, "weight_decay": train.weight_decay, "betas": tuple(train.adam_betas)}
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    import bitsandbytes

    return getattr(bitsandbytes.optim, BITSANDBYTES[train.optimizer])(params, **kwargs)
