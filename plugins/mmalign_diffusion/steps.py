"""Sampled trajectories as what trains: each denoising step is a scored unit (DDPO, Black et al. 2023).

A sampled image's score is the sum of its trained steps' log-probabilities under the model,

    s(c, x_T..x_0) = sum_{k in K} log p_theta(x_{k+1} | x_k, c)    (mmalign_diffusion.trajectory)

and the per-unit scores are the terms, so the online loop's policy losses (PPO-clip per unit,
the group baselines, a per-step KL to the reference) train diffusion models unchanged. K is a
random subset of the stochastic steps, ``int(timestep_fraction * S)`` of them (at least one),
drawn per image in ``collate`` (DDPO trains on a random permutation's first fraction of the
steps of each sample). A step is recomputed at its recorded (x_t, t, x_{t-1}) with the guided
prediction the sampler used (classifier-free guidance against the unconditional embedding);
under the model that sampled it, it gives back the recorded log-prob (ratio 1).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from mmalign.scores import Scores
from mmalign_diffusion.batch import DiffusionBatch, SampledSteps
from mmalign_diffusion.trajectory import step_log_prob
from mmalign_text.causal_lm import unwrap_wrappers


def group_steps(trajectory, context: int, n: int, timestep_fraction: float) -> SampledSteps:
    """Context ``context``'s n rows of a sampler's Trajectory (mmalign_diffusion.online)."""
    rows = slice(context * n, (context + 1) * n)
    return SampledSteps(trajectory.latents[rows].clone(), trajectory.timesteps.clone(), trajectory.stochastic,
                        trajectory.log_probs[rows].clone(), trajectory.negative_text, trajectory.negative_pooled,
                        trajectory.guidance_scale, trajectory.eta, timestep_fraction)


def trained_step_count(trainable: Tensor, fraction: float) -> int:
    """How many steps each image trains: int(fraction x stochastic steps), at least one (DDPO)."""
    return max(1, int(fraction * int(trainable.sum())))


def collate_steps(groups: list, generator: Optional[torch.Generator]) -> SampledSteps:
    """The groups' trajectories as R rows in response-major order (row j * C + i: sample j of
    context i), and for each row the steps it trains: the first U of a random permutation of the
    stochastic steps, from ``generator``."""
    first = groups[0].steps
    latents = torch.stack([g.steps.latents for g in groups], 1).flatten(0, 1)
    log_probs = torch.stack([g.steps.log_probs for g in groups], 1).flatten(0, 1)
    stochastic = first.trainable.nonzero().squeeze(1)
    count = trained_step_count(first.trainable, first.timestep_fraction)
    if generator is None:
        raise ValueError("collate of sampled trajectories needs the run's generator (it draws the steps to train)")
    selected = torch.stack([stochastic[torch.randperm(len(stochastic), generator=generator)[:count]].sort().values
                            for _ in range(len(latents))])
    return SampledSteps(latents.float(), first.timesteps, first.trainable, log_probs, first.negative_text,
                        first.negative_pooled, first.guidance_scale, first.eta, first.timestep_fraction, selected)


def conditioning(text: Tensor, pooled: Optional[Tensor], time_ids: Optional[Tensor], negative_text: Optional[Tensor],
                 negative_pooled: Optional[Tensor], device: torch.device, dtype: torch.dtype) -> dict:
    """UNet keyword inputs for rows conditioned on ``text`` [rows, L, D] (and SDXL's ``pooled``
    [rows, P], ``time_ids`` [rows or 1, 6]); with a negative embedding, the unconditional rows first
    (classifier-free guidance, as the pipelines batch it)."""
    def rows(cond: Tensor, negative: Optional[Tensor]) -> Tensor:
        return cond if negative is None else torch.cat([negative.expand_as(cond), cond])

    kwargs = {"encoder_hidden_states": rows(text, negative_text).to(device, dtype)}
    if time_ids is not None:
        time_ids = time_ids.expand(len(text), 6)
        kwargs["added_cond_kwargs"] = {"text_embeds": rows(pooled, negative_pooled).to(device, dtype),
                                       "time_ids": rows(time_ids, time_ids if negative_text is not None else None)
                                       .to(device, dtype)}
    return kwargs


def trajectory_scores(plugin, model: nn.Module, batch: DiffusionBatch, units: Optional[slice] = None) -> Scores:
    """Scores [C, n] of sampled images: the sums of their trained steps' log-probs under
    ``model``, with the per-step terms as unit scores [C, n, U] (module docstring). One UNet pass
    per unit over every row, each row at its own timestep (its u-th trained step): U passes of
    all rows, rather than one pass per distinct timestep over the rows that train it (up to every
    step of the schedule, in smaller batches). ``units``: only those units' passes run, the other
    columns are 0 (an update backpropagating step by step, mmalign/unit_chunks.py)."""
    from mmalign_diffusion.online import ddim_scheduler, guided_prediction

    steps, device = batch.steps, batch.latents.device
    contexts = len(batch.captions)
    rows, count = steps.selected.shape
    scheduler = ddim_scheduler(plugin.comps, len(steps.timesteps))
    dtype = next(p.dtype for p in unwrap_wrappers(model).parameters())
    every_row = torch.arange(rows, device=device)
    pooled = batch.pooled[every_row % contexts] if batch.pooled is not None else None
    inputs = conditioning(batch.text[every_row % contexts], pooled, batch.time_ids, steps.negative_text,
                          steps.negative_pooled, device, dtype)
    scored = range(*(units or slice(None)).indices(count))
    columns = []
    for u in range(count):
        if u not in scored:
            columns.append(torch.zeros(rows, device=device))
            continue
        k = steps.selected[:, u].to(device)
        t = steps.timesteps.to(device)[k]
        x_t, x_prev = steps.latents[every_row, k], steps.latents[every_row, k + 1]
        x_in = x_t.clone()
        for value in t.unique():  # the scheduler's input scaling (identity for DDIM), per timestep
            x_in[t == value] = scheduler.scale_model_input(x_t[t == value], value)
        prediction = guided_prediction(model, x_in, t, inputs, steps.guidance_scale)
        column = torch.zeros(rows, device=device)
        for value in t.unique():
            where = (t == value).nonzero().squeeze(1)
            column = column.index_put((where,), step_log_prob(scheduler, prediction[where], value, x_t[where],
                                                              x_prev[where], steps.eta))
        columns.append(column)
    log_probs = torch.stack(columns, 1)  # [rows, U]
    per_context = log_probs.view(rows // contexts, contexts, count).transpose(0, 1).contiguous()  # [C, n, U]
    ones = torch.ones_like(per_context)
    return Scores(per_context.sum(-1), ones.sum(-1), unit_scores=per_context, unit_mask=ones)
