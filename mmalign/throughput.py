"""How fast a run goes: the wall-clock and progress keys of each metrics row.

Every row gets ``epoch`` (records taken / records per epoch: deterministic, equal after a resume)
and these keys, which depend on the wall clock and so all stand under ``time/`` (tests comparing
runs strip that prefix):

    time/elapsed         seconds since the run started (a resumed run continues the checkpoint's)
    time/data            seconds per optimizer step spent getting batches (collate, to_device,
                         encode; an online source's rollout)
    time/data_share      time/data / time/step
    time/samples_per_s   training examples (records offline, prompts x samples online) per second
                         of step time
    time/tokens_per_s    non-padding tokens of the policy forward per second (token plugins)
    time/images_per_s    images scored per second (diffusion)

A row covers the steps since the last one; its rates are total work / total step time of those
steps (every process's work together, the processes' mean time), not a mean of per-step rates.
A plugin that cannot count a batch's tokens or images (``batch_counts``) gets no such rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

UNITS = ("tokens", "images")  # what ModalityPlugin.batch_counts may count
_FIELDS = ("steps", "step_seconds", "data_seconds", "samples") + UNITS


@dataclass
class Meter:
    """This process's work and time since the last row, and the run's clock."""

    started: float = field(default_factory=lambda: time.perf_counter())  # when elapsed was 0 (late-bound: tests fake it)
    sums: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(_FIELDS, 0.0))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def add_batch(self, seconds: float, samples: int, counts: dict[str, Any]) -> None:
        """A micro-batch: the seconds spent getting it, its training examples, the plugin's counts
        (kept as tensors, on the batch's device: read once per row, not once per batch)."""
        self.sums["data_seconds"] += seconds
        self.sums["samples"] += samples
        for unit in UNITS:  # NaN: the plugin cannot say, and the row leaves the rate out
            self.sums[unit] = self.sums[unit] + counts.get(unit, math.nan)

    def add_step(self, seconds: float) -> None:
        self.sums["steps"] += 1
        self.sums["step_seconds"] += seconds

    def row(self, accelerator) -> dict[str, float]:
        """The time/ keys of a row (all processes together); starts the next window."""
        totals = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32).detach().cpu() for k in _FIELDS])
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").tolist()
        self.sums = dict.fromkeys(_FIELDS, 0.0)
        steps, step_seconds, data_seconds, samples, *units = totals
        window = step_seconds / accelerator.num_processes  # the processes step together
        row = {"time/elapsed": self.elapsed(), "time/data": data_seconds / max(steps, 1),
               "time/data_share": data_seconds / step_seconds if step_seconds > 0 else 0.0}
        if window > 0:
            row["time/samples_per_s"] = samples / window
            row.update({f"time/{unit}_per_s": n / window for unit, n in zip(UNITS, units) if math.isfinite(n)})
        return row

