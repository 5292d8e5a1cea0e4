"""FSDP2 state on disk: checkpoints of sharded model and optimizer state, and the consolidated
model of ``final/`` (the accelerator side of FSDP, which starts it and runs it, is
:mod:`mmalign.sharding`).

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
"""

from __future__ import annotations

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
    (:func:`mmalign_runs.checkpoint.start_checkpoint`), then every process writes its shards into
    ``sharded/`` there (:func:`save_sharded`); a failure removes the directory. Collective."""
    from mmalign_runs import checkpoint as ckpt

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
