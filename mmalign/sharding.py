"""Sharded training (FSDP2, ``fully_shard`` through accelerate): checkpoints of sharded model and
optimizer state, and the consolidated model of ``final/``.

Under FSDP2 each process holds a slice (a DTensor shard) of every parameter and of its optimizer
state, so no process can write the whole model alone. A checkpoint then holds ``sharded/``, written
by every process at once through ``torch.distributed.checkpoint`` with its Hugging Face storage
writer: one safetensors file per process, whose header records where each slice sits in the full
tensor (no pickle, unlike DCP's default ``.metadata``). The reader reassembles and re-slices, so a
checkpoint written by N processes resumes on M (one, without FSDP, included). The optimizer's
hyper-parameters (param_groups, with parameter names) go to ``trainer_state.json``.

``final/`` is the plain model: every process takes part in gathering the full state dict, which
lands on the main process's CPU (``full_model_state``); the plugin's ``save`` then runs there with
the full tensors put in place of the shards (``full_parameters``), so it writes exactly what it
writes without FSDP (a transformers / diffusers model, or the LoRA adapter alone).

Accelerate starts FSDP only on an accelerator (CUDA, XPU, ...): launched with an FSDP config on a
machine without one, it would run plain data parallelism over gloo without a word.
:func:`enable_fsdp_on_cpu` switches accelerate's state to FSDP there, so that the same
accelerate code path (``fully_shard`` of each ``_no_split_modules`` layer, FSDP2 gradient
clipping) runs on CPU processes: that is how the tests exercise it without a GPU.
"""

from __future__ import annotations

import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from mmalign.errors import ConfigError

SHARDED_DIR = "sharded"  # in a checkpoint: the DCP safetensors files, one per process
MODEL_PREFIX, OPTIMIZER_PREFIX = "model.", "optimizer."


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


def refuse_under_fsdp(cfg: Any) -> None:
    """What does not run sharded yet, refused before anything loads: sampling (online algorithms,
    eval.samples), where each process would decode its own prompts with sharded weights and wait
    for the others' gathers; bitsandbytes' optimizers, untested on sharded parameters."""
    key = "algorithm.name" if cfg.algorithm.name else "eval.samples" if cfg.eval.samples else None
    if key:
        raise ConfigError(f"{key}: sampling under FSDP is not supported yet: each process would decode its "
                          f"own prompts with sharded weights and wait for the others' gathers. Train with DDP "
                          f"(configs/accelerate/ddp.yaml) or without {key}; see docs/scale.md.")
    if cfg.train.optimizer != "adamw":
        raise ConfigError(f"train.optimizer: {cfg.train.optimizer} under FSDP is not supported yet (bitsandbytes' "
                          f"optimizers on sharded parameters are untested). Use adamw, or DDP.")


def is_sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict (DTensor shards under FSDP), each storage once: a tied weight (the
    output layer sharing the embedding) is saved and loaded under its first name only."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    seen, tensors = set(), {}
    for name, value in get_model_state_dict(model).items():
        local = _local(value)
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if local.numel() and key in seen:
            continue
        seen.add(key)
        tensors[MODEL_PREFIX + name] = value
    return tensors


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Every process writes its shards of the model and optimizer state into ``directory``
    (collective: every process calls it). Returns the JSON-able rest of the optimizer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    tensors = _model_tensors(model)
    optim = get_optimizer_state_dict(model, optimizer)
    kinds: dict[str, list] = {}
    scalars: dict[str, dict] = {}
    for name, state in optim["state"].items():
        for key, value in state.items():
            if not torch.is_tensor(value):
                scalars.setdefault(name, {})[key] = value
                continue
            tensors[f"{OPTIMIZER_PREFIX}{name}.{key}"] = value
            # how to rebuild a tensor to load into: shaped like its parameter (Adam's moments), or not
            like = "parameter" if hasattr(value, "device_mesh") or value.dim() else "tensor"
            kinds[f"{name}.{key}"] = [like, str(value.dtype).removeprefix("torch."), list(value.shape)]
    with _one_process_is_fine():
        dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(directory), save_distributed=True))
    return {"param_groups": optim["param_groups"], "scalars": scalars, "sharded": kinds}


def save_shards(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                accelerator: Any) -> dict:
    """A checkpoint's sharded part: the main process makes the checkpoint's staging directory
    (:func:`mmalign.checkpoint.start_checkpoint`), then every process writes its shards into
    ``sharded/`` there (:func:`save_sharded`); a failure removes the directory. Collective."""
    from mmalign import checkpoint as ckpt

    if accelerator.is_main_process:
        ckpt.start_checkpoint(root, step)
    accelerator.wait_for_everyone()
    try:
        return save_sharded(ckpt.staging_dir(root, step) / SHARDED_DIR, model, optimizer)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(ckpt.staging_dir(root, step), ignore_errors=True)
        raise


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Load what :func:`save_sharded` wrote into ``model`` and ``optimizer``, sharded or not,
    whatever the number of processes that wrote it (collective where the run has several).
    A checkpoint whose tensors do not match the model's names: ConfigError."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    tensors = _model_tensors(model)
    params = {name[len(MODEL_PREFIX):]: value for name, value in tensors.items()}
    state: dict[str, dict] = {name: dict(values) for name, values in meta["scalars"].items()}
    for name, (like, dtype, shape) in meta["sharded"].items():
        fqn, key = name.rsplit(".", 1)
        if like == "parameter":
            if fqn not in params:
                raise ConfigError(f"{directory}: optimizer state for '{fqn}', which this model does not have.")
            template = torch.zeros_like(params[fqn], dtype=getattr(torch, dtype))
        else:
            template = torch.zeros(shape, dtype=getattr(torch, dtype))
        state.setdefault(fqn, {})[key] = tensors[OPTIMIZER_PREFIX + name] = template
    reader = dcp.HuggingFaceStorageReader(str(directory))
    _check_fits(directory, reader.read_metadata().state_dict_metadata, tensors)
    with _one_process_is_fine():
        dcp.load(tensors, storage_reader=reader)
    set_model_state_dict(model, {name[len(MODEL_PREFIX):]: value for name, value in tensors.items()
                                 if name.startswith(MODEL_PREFIX)}, options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": meta["param_groups"]})


@contextmanager
def _one_process_is_fine() -> Iterator[None]:
    """DCP warns when it runs without a process group: resuming a sharded checkpoint in one
    process is meant (the shards are reassembled), so the warning would only alarm."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _check_fits(directory: Path, saved: dict, tensors: dict[str, torch.Tensor]) -> None:
    """ConfigError unless the checkpoint holds exactly these tensor names, with these shapes."""
    odd = sorted(set(saved) ^ set(tensors))
    what = f"{len(odd)} tensor names differ, e.g. {odd[0]}" if odd else ""
    for name, value in tensors.items():
        if not what and tuple(saved[name].size) != tuple(value.shape):
            what = f"{name} is {tuple(saved[name].size)} there and {tuple(value.shape)} here"
    if what:
        raise ConfigError(f"{directory} does not fit the model of this config ({what}). Resume with the "
                          f"model settings (size, LoRA) it was written with, or start a new run.")


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict, gathered onto the main process's CPU (an empty dict on the
    others). Collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextmanager
def full_parameters(model: nn.Module, full_state: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Within the block, ``model``'s sharded parameters are replaced by the full tensors of
    ``full_state`` (:func:`full_model_state`), so that code written for an unsharded model (the
    plugin's ``save``) sees the whole model; the shards are put back on exit. A parameter shared
    by several modules (tied weights) stays one shared tensor. No forward pass may run inside."""
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    replacement: dict[int, nn.Parameter] = {}
    classes = _unsharded_classes(model) if full_state else []
    try:
        for module_name, module in model.named_modules(remove_duplicate=False):
            for name, param in list(module._parameters.items()):
                fqn = f"{module_name}.{name}" if module_name else name
                if param is None or (id(param) not in replacement and fqn not in full_state):
                    continue
                if id(param) not in replacement:
                    replacement[id(param)] = nn.Parameter(full_state[fqn], requires_grad=param.requires_grad)
                swapped.append((module, name, param))
                module._parameters[name] = replacement[id(param)]
        yield model
    finally:
        for module, name, param in reversed(swapped):
            module._parameters[name] = param
        for module, cls in classes:
            module.__class__ = cls


def _unsharded_classes(model: nn.Module) -> list[tuple[nn.Module, type]]:
    """Give every module ``fully_shard`` re-classed (``FSDPLlavaForConditionalGeneration``) its
    own class back, returning what to restore: transformers picks the checkpoint key names it
    saves by class (LLaVA's ``language_model.model.*``), and would write others for the FSDP one."""
    from torch.distributed.fsdp import FSDPModule

    changed = []
    for module in model.modules():
        bases = type(module).__bases__
        if isinstance(module, FSDPModule) and len(bases) == 2 and bases[0] is FSDPModule:
            changed.append((module, type(module)))
            module.__class__ = bases[1]
    return changed



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
