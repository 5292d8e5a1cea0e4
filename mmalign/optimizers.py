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
    params = list(params)
    if not params:
        from mmalign.errors import ConfigError

        raise ConfigError("the model has nothing to train: every parameter has requires_grad False. A PEFT "
                          "model passed to mmalign.train must be loaded trainable (PeftModel.from_pretrained("
                          "base, path, is_trainable=True)); or set model.lora to attach new adapters.")
    kwargs = {"lr": train.lr, "weight_decay": train.weight_decay, "betas": tuple(train.adam_betas)}
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    import bitsandbytes

    return getattr(bitsandbytes.optim, BITSANDBYTES[train.optimizer])(params, **kwargs)


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
