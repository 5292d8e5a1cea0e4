"""An optimizer's state as safetensors tensors plus JSON, for checkpoints (and an online source's
own optimizer, PPO's critic): no pickles, any registered optimizer (bitsandbytes' nested state too)."""

from __future__ import annotations

from typing import Any

import torch


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
