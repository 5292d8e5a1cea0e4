"""Sharded training (FSDP2, ``fully_shard`` through accelerate), the accelerator's side: starting
FSDP, refusing what it does not support, and running a model method as a forward pass. Sharded
state on disk (checkpoints, the consolidated ``final/``) belongs to the run store
(``plugins/mmalign_runs/sharded_state.py``).

Accelerate starts FSDP only on an accelerator (CUDA, XPU, ...): launched with an FSDP config on a
machine without one, it would run plain data parallelism over gloo without a word.
:func:`enable_fsdp_on_cpu` switches accelerate's state to FSDP there, so that the same
accelerate code path (``fully_shard`` of each ``_no_split_modules`` layer, FSDP2 gradient
clipping) runs on CPU processes: that is how the tests exercise it without a GPU.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from mmalign.errors import ConfigError


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch`` with an FSDP config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_fsdp_on_cpu(accelerator: Any) -> None:
    """Launched with an FSDP config on CPU processes, switch accelerate's state from plain data
    parallelism (what it falls back to there) to FSDP, so ``prepare`` shards the model. Both of
    accelerate's shared states are set: ``AcceleratorState()`` re-reads ``PartialState``'s. (A
    second Accelerator of the process, e.g. a demo's next stage, finds FSDP without its plugin.)"""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = AcceleratorState()
    if not fsdp_requested() or getattr(state, "fsdp_plugin", None) is not None or \
            accelerator.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.FSDP):
        return
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables


def check_supported(accelerator: Any) -> None:
    """Refuse the sharding set-ups whose checkpoints mmalign cannot write correctly (exit 2)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError("FSDP version 1 is not supported: mmalign checkpoints FSDP2 (fully_shard) "
                          "state. Set fsdp_config.fsdp_version: 2 in the accelerate config "
                          "(configs/accelerate/fsdp.yaml does).")
    if kind == DistributedType.DEEPSPEED or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ConfigError("DeepSpeed is not supported yet: its ZeRO partitions would be saved as one "
                          "process's slice. Use FSDP2 (configs/accelerate/fsdp.yaml), which shards "
                          "parameters, gradients and optimizer state like ZeRO-3. See docs/scale.md.")


def refuse_under_fsdp(cfg: Any, reg: Any) -> None:
    """What does not run sharded yet, refused before anything loads: sampling (online algorithms,
    eval.samples), where each process would decode its own prompts with sharded weights and wait
    for the others' gathers; an optimizer registered with ``sharded=False`` (bitsandbytes')."""
    key = "algorithm.name" if cfg.algorithm.name else "eval.samples" if cfg.eval.samples else None
    if key:
        raise ConfigError(f"{key}: sampling under FSDP is not supported yet: each process would decode its "
                          f"own prompts with sharded weights and wait for the others' gathers. Train with DDP "
                          f"(configs/accelerate/ddp.yaml) or without {key}; see docs/scale.md.")
    entry = reg.entry("optimizers", cfg.train.optimizer, "train.optimizer")
    if not entry.meta.get("sharded", True):
        raise ConfigError(f"train.optimizer: {cfg.train.optimizer} under FSDP is not supported yet (its plugin, "
                          f"{entry.source}, does not run it on sharded parameters). Use adamw, or DDP.")


def is_sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def run_as_forward(model: nn.Module, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` as one forward pass of ``model``, to FSDP2: the parameters of
    ``model``'s own shard group (those no wrapped layer holds: embeddings, a VLM's vision
    embeddings and projector) are gathered first, as ``model(...)`` would. Without FSDP it is a
    plain call. For a model method other than ``forward`` called without gradients (a VLM's
    ``get_image_features`` when sampling or evaluating). (``register_fsdp_forward_method`` of a
    trampoline the model carries.)

    With gradients, a plugin must not compute a forward input from the model's own weights (image
    features merged into token embeddings, then ``model(inputs_embeds=...)``): FSDP2 reduces and
    frees a shard group's gradients as soon as the backward pass reaches that group's forward
    inputs, and what would flow on into the projector and the embeddings is lost without an
    error (measured: the gradient norm of the tiny LLaVA dropped from 7.40 to 6.83). Under FSDP
    such a plugin scores through the model's own forward (the engine calls its
    ``use_sharded_policy``: mmalign.protocol)."""
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    if not isinstance(model, FSDPModule):
        return fn(*args, **kwargs)
    if "_mmalign_forward" not in model.__dict__:
        model.__dict__["_mmalign_forward"] = lambda inner, *a, **k: inner(*a, **k)
        register_fsdp_forward_method(model, "_mmalign_forward")
    return model._mmalign_forward(fn, *args, **kwargs)
