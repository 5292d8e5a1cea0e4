"""Records of the control modality: pairs of behaviour segments, checked and turned into tensors.

A segment is ``{"observations": [[float] * obs_dim] * T, "actions": [[float] * d] * T (continuous)
or [int] * T (discrete), "rewards": [float] * T (optional, for evaluation only: never scored)}``.
A paired record is ``{"chosen": segment, "rejected": segment}``, or ``{"segment_0": segment,
"segment_1": segment, "label": 0 | 1 | 0.5}`` with ``label`` the index of the preferred segment
(0.5, a tie, is skipped and counted). An unpaired record (behaviour cloning, KTO-style single
losses) is ``{"segment": segment}``; a paired record used unpaired gives its preferred segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmalign.data import Record
from mmalign.errors import DataError, SkipRecord
from mmalign_control.policy import PolicyConfig


@dataclass
class Segment:
    observations: Tensor  # [T, obs_dim] float32
    actions: Tensor  # [T, d] float32 (continuous, clipped inside the bounds) or [T] int64


def preferred_and_other(record: Record, paired: bool) -> list[Any]:
    """The raw segments of a record, preferred first: two when ``paired``, else one."""
    fields = record.fields
    if "chosen" in fields or "rejected" in fields:
        names = ["chosen", "rejected"] if paired else ["chosen"]
    elif "segment_0" in fields or "segment_1" in fields:
        label = fields.get("label")
        if label not in (0, 1, 0.5) or isinstance(label, bool):
            raise DataError(f"{record.where}: \"label\" must be 0 or 1 (the index of the preferred "
                            f"segment) or 0.5 for a tie; got {label!r}.")
        if label == 0.5:
            raise SkipRecord("tied pair (label 0.5)")
        names = [f"segment_{int(label)}", f"segment_{1 - int(label)}"][:2 if paired else 1]
    elif "segment" in fields and not paired:
        names = ["segment"]
    else:
        wanted = ("\"chosen\" and \"rejected\", or \"segment_0\", \"segment_1\" and \"label\"" if paired
                  else "\"segment\" (or a pair: \"chosen\" / \"segment_0\", \"segment_1\", \"label\")")
        raise DataError(f"{record.where}: a control record needs {wanted}; it has "
                        f"{', '.join(sorted(fields)) or 'no fields'}.")
    missing = [n for n in names if n not in fields]
    if missing:
        raise DataError(f"{record.where}: \"{missing[0]}\" is missing.")
    return [(n, fields[n]) for n in names]


def _array(value: Any, where: str, dtype) -> np.ndarray:
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: must be a rectangular list of numbers ({e}).") from e


def parse_segment(raw: Any, where: str, config: PolicyConfig, action_clip: float) -> Segment:
    """One raw segment -> tensors, checked against the policy's shapes and action bounds.
    Continuous actions are clipped to ``action_clip`` of the half-range around the centre: atanh
    of an action on the bound is infinite (recorded torques are often saturated)."""
    if not isinstance(raw, dict) or "observations" not in raw or "actions" not in raw:
        raise DataError(f"{where}: a segment is an object with \"observations\" and \"actions\" "
                        f"(and optional \"rewards\").")
    obs = _array(raw["observations"], f"{where}.observations", np.float32)
    if obs.ndim != 2 or obs.shape[1] != config.obs_dim or obs.shape[0] == 0:
        raise DataError(f"{where}.observations: must be T >= 1 rows of {config.obs_dim} numbers "
                        f"(model.tiny.obs_dim); got shape {list(obs.shape)}.")
    steps = obs.shape[0]
    if config.discrete:
        actions = _array(raw["actions"], f"{where}.actions", np.float64)
        if actions.shape != (steps,) or np.any(actions != np.round(actions)) or np.any(actions < 0) \
                or np.any(actions >= config.action_dim):
            raise DataError(f"{where}.actions: must be {steps} integers in [0, {config.action_dim}) "
                            f"(one per observation); got shape {list(actions.shape)}.")
        act = torch.from_numpy(actions.astype(np.int64))
    else:
        actions = _array(raw["actions"], f"{where}.actions", np.float64)
        if actions.ndim == 1 and config.action_dim == 1:
            actions = actions[:, None]
        if actions.shape != (steps, config.action_dim):
            raise DataError(f"{where}.actions: must be {steps} rows of {config.action_dim} numbers "
                            f"(one per observation); got shape {list(actions.shape)}.")
        low, high = np.asarray(config.action_low), np.asarray(config.action_high)
        slack = 1e-6 * (high - low)
        if np.any(actions < low - slack) or np.any(actions > high + slack) or not np.all(np.isfinite(actions)):
            raise DataError(f"{where}.actions: not finite or outside the action bounds (low "
                            f"{config.action_low}, high {config.action_high}: model.tiny.action_low / "
                            f"action_high).")
        loc, scale = (high + low) / 2, (high - low) / 2
        act = torch.from_numpy(np.clip(actions, loc - action_clip * scale, loc + action_clip * scale)
                               .astype(np.float32))
    if not np.all(np.isfinite(obs)):
        raise DataError(f"{where}.observations: not finite (NaN or infinity).")
    return Segment(torch.from_numpy(obs), act)


def parse_record(record: Record, *, paired: bool, config: PolicyConfig, action_clip: float) -> list[Segment]:
    return [parse_segment(raw, f"{record.where}: {name}", config, action_clip)
            for name, raw in preferred_and_other(record, paired)]


@dataclass
class SegmentBatch:
    """C contexts x k segments, padded to the longest: observations [C, k, T, obs_dim], actions
    [C, k, T, d] or [C, k, T], mask [C, k, T] (1 on real steps)."""

    observations: Tensor
    actions: Tensor
    mask: Tensor


def collate_segments(examples: list[list[Segment]], config: PolicyConfig) -> SegmentBatch:
    """Pad every segment to the longest; padded actions sit at the centre of the box (atanh 0),
    so they stay finite, and the mask removes them from every score."""
    contexts, k = len(examples), len(examples[0])
    steps = max(s.observations.shape[0] for e in examples for s in e)
    obs = torch.zeros(contexts, k, steps, config.obs_dim)
    mask = torch.zeros(contexts, k, steps)
    if config.discrete:
        actions = torch.zeros(contexts, k, steps, dtype=torch.long)
    else:
        low, high = torch.tensor(config.action_low), torch.tensor(config.action_high)
        actions = ((high + low) / 2).expand(contexts, k, steps, config.action_dim).clone()
    for c, example in enumerate(examples):
        for j, segment in enumerate(example):
            n = segment.observations.shape[0]
            obs[c, j, :n], actions[c, j, :n], mask[c, j, :n] = segment.observations, segment.actions, 1.0
    return SegmentBatch(obs, actions, mask)
