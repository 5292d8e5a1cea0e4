"""``train.optimizer``: the optimizer a plugin registered under that name
(``mmalign_register_optimizers``; the built-in ones are in ``plugins/mmalign_optimizers``), checked
before anything loads; and an optimizer's state as safetensors tensors plus JSON, for checkpoints."""

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


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and JSON-able rest. A nested
    state (bitsandbytes keeps its quantization state in a dict) is flattened into dotted keys."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()  # storages already taken: safetensors refuses two names for one (bitsandbytes' qmaps)

    def walk(idx: str, prefix: str, state: dict) -> None:
        for key, value in state.items():
            if isinstance(value, dict):
                walk(idx, f"{prefix}{key}.", value)
            elif torch.is_tensor(value):
                tensor = value.detach().cpu().contiguous()
                shared = tensor.untyped_storage().data_ptr() in seen
                seen.add(tensor.untyped_storage().data_ptr())
                tensors[f"{idx}.{prefix}{key}"] = tensor.clone() if shared else tensor
            else:
                scalars.setdefault(idx, {})[f"{prefix}{key}"] = value

    for idx, state in sd["state"].items():
        walk(str(idx), "", state)
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}

    def put(idx: str, path: str, value: Any) -> None:
        *parents, key = path.split(".")
        node = state.setdefault(int(idx), {})
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value

    for name, value in tensors.items():
        put(*name.split(".", 1), value)
    for idx, values in meta["scalars"].items():
        for path, value in values.items():
            put(idx, path, value)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
