"""Backpropagating an update unit by unit: the graph of one unit at a time in memory, as DDPO's
trainers update one denoising step at a time, instead of the graphs of every trained step until one
backward.

It applies when the loss is a sum of per-unit terms, each depending on its own unit's score only
(``LossSpec.unit_separable``, e.g. PPO-clip per token with a per-token KL), and the plugin can
score one unit alone at that unit's cost (``ModalityPlugin.unit_chunks``: the diffusion plugin's
denoising steps; a text forward costs the same for one token as for all). For unit u, the loss is
computed on the scores of units < u (detached, already computed), u (with its graph) and > u (0,
not computed yet), and backpropagated. Its gradient is the loss's gradient in unit u, because no
other term depends on it; the sum over u is the whole gradient. The last unit's loss sees every
score, so it is the step's loss and metrics. FSDP runs keep one backward (the sharded gradients
are reduced once per backward).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from mmalign.losses.objective import objective_loss
from mmalign.scores import Scores


def unit_by_unit(plugin: Any, objective: Any, sharded: bool) -> bool:
    """Whether an update backpropagates unit by unit (module docstring)."""
    separable = objective.spec.unit_separable
    return (plugin.unit_chunks and objective.spec.per_unit and not sharded
            and separable is not None and separable(objective.options))


def backward_by_units(run: Any, batch: Any, ref: Scores | None, last: bool) -> tuple[Tensor, dict]:
    """Score, loss and backward for each unit of ``batch`` in turn; returns the last unit's loss
    and metrics (those of the whole micro-batch). Gradients are synchronised across processes on
    the last unit of the last micro-batch only."""
    count = run.plugin.unit_count(batch.data)
    known = None  # [C, k, U]: the scores computed so far (detached), 0 for the others
    for u in range(count):
        with nullcontext() if last and u == count - 1 else run.accelerator.no_sync(run.policy):
            with run.accelerator.autocast():
                pol = run.plugin.score(run.policy, batch.data, per_unit=True, units=slice(u, u + 1))
            unit = torch.zeros(pol.unit_scores.shape[-1], dtype=torch.bool, device=pol.unit_scores.device)
            unit[u] = True
            known = torch.zeros_like(pol.unit_scores.detach()) if known is None else known
            scores = torch.where(unit, pol.unit_scores, known)
            loss, metrics = objective_loss(run.objective, _with_units(pol, scores), ref, batch.values)
            run.accelerator.backward(loss / run.stream.accumulation)
            known = torch.where(unit, pol.unit_scores.detach(), known)
    return loss, metrics


def _with_units(pol: Scores, unit_scores: Tensor) -> Scores:
    mask = pol.unit_mask.to(unit_scores.dtype)
    return Scores((unit_scores * mask).sum(-1), pol.units, unit_scores=unit_scores, unit_mask=pol.unit_mask)
