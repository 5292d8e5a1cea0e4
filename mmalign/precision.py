"""Precision: fp32 master weights for what trains, ``model.dtype`` for storage, autocast for compute.

Three settings, three roles (the split of mixed-precision training, as in TRL and the diffusers
scripts):

    model.dtype           storage: the dtype weights are loaded in. Frozen weights (a LoRA base,
                          a reference loaded from reference.name_or_path, diffusion text encoders)
                          stay in it.
    train.master_weights  float32 (default): right after the plugin's load_policy, every trainable
                          parameter is upcast to float32. AdamW moves a weight by about lr per step;
                          in bfloat16 (8 significant bits) an update smaller than |w| / 256 rounds
                          away, so with lr 5e-7 almost nothing would train. model_dtype: the optimizer
                          updates the weights in model.dtype (pure low-precision training), with a
                          warning.
    compute               train.precision (accelerate's autocast). When it is "no" and model.dtype
                          is bfloat16 or float16, the forward passes run under autocast in that
                          dtype: the compute the user asked for, on fp32 master weights.

The frozen reference copy (full fine-tuning) is a copy of the policy after the upcast: at step 0
policy and reference then compute identically and the DPO loss is exactly ln 2.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mmalign import sharding
from mmalign.errors import ConfigError

AUTOCAST_OF_DTYPE = {"bfloat16": "bf16", "float16": "fp16"}
# model.dtype -> what from_pretrained takes as ``dtype`` ("auto": the checkpoint's own dtype). The one
# table of every plugin; a plugin that cannot honour "auto" (diffusion) refuses it in check_config.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def mixed_precision(model_dtype: str, precision: str) -> str:
    """accelerate's ``mixed_precision`` for a run: ``train.precision`` when set, else the autocast
    matching a half-precision ``model.dtype``, else "no"."""
    implied = AUTOCAST_OF_DTYPE.get(model_dtype)
    if precision != "no":
        if implied is not None and implied != precision:
            raise ConfigError(f"model.dtype '{model_dtype}' and train.precision '{precision}' disagree: "
                              f"weights stored in {model_dtype} would be computed in another half "
                              f"precision (float16 overflows bfloat16's range). Set train.precision: "
                              f"{implied} (or 'no', which means {implied} for this dtype).")
        return precision
    return implied or "no"


def make_accelerator(mixed: str, *, cpu: bool, log_with: list[str] | None = None, project_dir=None):
    """An accelerate Accelerator computing in ``mixed``; ConfigError where accelerate cannot.
    ``log_with``: accelerate's experiment trackers (``train.report_to``), writing under
    ``project_dir`` those that keep local files (TensorBoard).

    AcceleratorState is a process-wide singleton that refuses a second, different mixed precision;
    a process that trains twice (a demo's SFT then DPO, a sweep, tests) resets that part of it
    (the processes and device, PartialState, are kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed:
        # Private, but accelerate (1.15) has no public way to change the precision of a process's
        # state; accelerate's own tests reset it so. PartialState (processes, device) is kept.
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed, cpu=cpu, log_with=log_with or None,
                              project_dir=project_dir if log_with else None)
    sharding.enable_fsdp_on_cpu(accelerator)
    sharding.check_supported(accelerator)
    _check_supported(accelerator, mixed)
    return accelerator


def _check_supported(accelerator, mixed: str) -> None:
    """accelerate ignores fp16 autocast on CPU without a word (no autocast, no grad scaler):
    refuse rather than train at a precision the config did not ask for. DeepSpeed and Megatron-LM
    run their own mixed precision (accelerate's native_amp is off for them)."""
    from accelerate.utils import DistributedType

    delegated = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
    if mixed != "no" and not accelerator.native_amp and not delegated:
        raise ConfigError(f"{mixed} compute is not available on {accelerator.device.type} (accelerate "
                          f"runs no {mixed} autocast there). It comes from train.precision, or from "
                          f"model.dtype when train.precision is 'no'. On CPU use model.dtype: bfloat16 "
                          f"or train.precision: bf16, or float32.")


def upcast_trainable(model: nn.Module) -> int:
    """Every trainable floating-point parameter to float32, in place (its ``.data``, so optimizers
    and wrappers built later see the fp32 tensor). Returns how many were upcast."""
    count = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            count += 1
    return count


def set_master_weights(model: nn.Module, master_weights: str, log: Callable[[str], None]) -> None:
    """Apply ``train.master_weights`` to a freshly loaded policy."""
    if master_weights == "float32":
        upcast_trainable(model)
        return
    low = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                  if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)})
    if low:
        log(f"warning: train.master_weights is model_dtype: the optimizer updates {', '.join(low)} "
            f"weights directly. Updates smaller than about |w| / 256 (bfloat16) round away, so at "
            f"small learning rates most weights never change. Use master_weights: float32 (default) "
            f"unless memory forbids it.")
