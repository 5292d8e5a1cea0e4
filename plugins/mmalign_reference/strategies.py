"""Reference strategies: where the reference scores s_ref come from (``reference.strategy``).

- ``copy``: a frozen copy of the initial policy (full fine-tuning), or a separate model.
- ``disable_adapters``: the policy itself with its LoRA adapters switched off. There is no second
  copy of the weights in memory: with adapters off, a PEFT model *is* the base model.
- ``auto``: ``disable_adapters`` for a LoRA policy without reference.name_or_path, else ``copy``.
- ``none``: reference-free losses (SFT, SimPO, ...); the run builds no reference and skips the pass.
- ``reference.cache`` wraps either in :class:`mmalign_reference.cache.CachedReference`.

A strategy is built with the plugin and the autocast it scores under; ``scores(batch)`` takes an
engine :class:`mmalign.batches.Batch`; ``shard(accelerator)`` is called under FSDP2 once the policy
is prepared.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn

from mmalign.batches import Batch
from mmalign.errors import ConfigError
from mmalign.scores import Scores


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def is_peft(model: nn.Module) -> bool:
    """A PEFT model, whose adapters can be switched off."""
    return hasattr(model, "disable_adapter")


class FrozenCopy:
    """A reference model held apart from the policy; scored under no_grad."""

    name = "copy"

    def __init__(self, model: nn.Module, plugin: Any, autocast: Callable = nullcontext):
        self.model, self.plugin, self.autocast = freeze(model), plugin, autocast

    def scores(self, batch: Batch, per_unit: bool = False) -> Scores:
        with torch.no_grad(), self.autocast():
            return self.plugin.score(self.model, batch.data, per_unit=per_unit)

    def shard(self, accelerator: Any) -> None:
        """FSDP2: the copy is sharded like the policy."""
        self.model = accelerator.prepare_model(self.model, evaluation_mode=True)


class DisabledAdapters:
    """The policy with its PEFT adapters disabled: the base model, without a copy."""

    name = "disable_adapters"

    def __init__(self, policy: nn.Module, plugin: Any, autocast: Callable = nullcontext):
        if not is_peft(policy):
            raise ConfigError("reference.strategy 'disable_adapters' needs a LoRA policy: set "
                              "model.lora, or use reference.strategy: copy.")
        self.policy, self.plugin, self.autocast = policy, plugin, autocast

    def scores(self, batch: Batch, per_unit: bool = False) -> Scores:
        with torch.no_grad(), self.autocast(), self.policy.disable_adapter():
            return self.plugin.score(self.policy, batch.data, per_unit=per_unit)

    def shard(self, accelerator: Any) -> None:
        """FSDP2: nothing to do, the policy is the reference."""


def make_reference(strategy: str, policy: nn.Module, plugin: Any, name_or_path: str | None,
                   needs_reference: bool, device: torch.device, autocast: Callable = nullcontext):
    """Choose and build the reference; ``None`` when the loss does not need one."""
    if not needs_reference or strategy == "none":
        if needs_reference:
            raise ConfigError("reference.strategy is 'none' but the loss needs a reference model. "
                              "Use a reference-free loss (e.g. sft) or strategy auto/copy.")
        return None
    if strategy == "auto":
        strategy = "disable_adapters" if is_peft(policy) and name_or_path is None else "copy"
    if strategy == "disable_adapters":
        return DisabledAdapters(policy, plugin, autocast)
    if name_or_path is not None:
        return FrozenCopy(plugin.load_reference(name_or_path).to(device), plugin, autocast)
    # A copy of a PEFT policy keeps its (initial) adapters: the reference is the policy at step 0.
    return FrozenCopy(copy.deepcopy(policy).to(device), plugin, autocast)


def registered(strategy: str) -> Callable:
    """The build registered as ``strategy`` (mmalign_register_references):
    ``build(policy, plugin, cfg, accelerator)``."""

    def build(policy: nn.Module, plugin: Any, cfg: Any, accelerator: Any):
        return make_reference(strategy, policy, plugin, cfg.reference.name_or_path, True, accelerator.device,
                              accelerator.autocast)

    return build


def check_disable_adapters(cfg: Any) -> None:
    """``disable_adapters`` (its ``check=``, before anything loads): the policy must be a LoRA one,
    and it is its own reference."""
    from mmalign.validation import fail

    if cfg.model.lora is None:
        raise fail(None, "reference.strategy", "is 'disable_adapters', which needs a LoRA policy: "
                                               "set model.lora, or use reference.strategy: copy.")
    if cfg.reference.name_or_path is not None:
        raise fail(None, "reference.name_or_path", "is set, but reference.strategy 'disable_adapters' uses the "
                                                   "policy itself; use strategy copy (or auto) for a separate model.")
