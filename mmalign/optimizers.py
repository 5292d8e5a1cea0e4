"""``train.optimizer``: the optimizer a plugin registered under that name
(``mmalign_register_optimizers``; the built-in ones are in ``plugins/mmalign_optimizers``), checked
before anything loads. Its state on disk is the run store's (mmalign_runs.optimizer_state)."""

from __future__ import annotations

import importlib.util
from typing import Any, Iterable

import torch

from mmalign.errors import ConfigError


def check_optimizer(name: str, reg: Any, where: str) -> None:
    """Before anything loads: a registered name whose required modules are installed (found, not imported)."""
    from mmalign.validation import fail

    entry = reg.entry("optimizers", name, "train.optimizer")
    missing = [m for m in entry.meta.get("requires", ()) if importlib.util.find_spec(m) is None]
    if missing:
        install = entry.meta.get("install", f"pip install {missing[0]}")
        raise fail(where, "train.optimizer", f"is '{name}', which needs {missing[0]}: `{install}`, or use "
                                             f"train.optimizer: adamw.")


def make_optimizer(train: Any, params: Iterable[torch.nn.Parameter], reg: Any) -> torch.optim.Optimizer:
    """The optimizer ``train.optimizer`` names over ``params``, with train.lr, weight_decay and adam_betas."""
    params = list(params)
    if not params:
        raise ConfigError("the model has nothing to train: every parameter has requires_grad False. A PEFT "
                          "model passed to mmalign.train must be loaded trainable (PeftModel.from_pretrained("
                          "base, path, is_trainable=True)); or set model.lora to attach new adapters.")
    return reg.get("optimizers", train.optimizer, "train.optimizer")(params, train)
