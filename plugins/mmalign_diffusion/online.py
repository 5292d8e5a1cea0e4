"""Sampling images from the diffusion plugin's UNet with a recorded trajectory: the protocol's
``sample`` (online training such as DDPO, Best-of-N).

The sampler is DDIM (Song et al. 2021) over the pipeline's noise schedule. With eta > 0 every step
is a Gaussian in x_{t-1} given x_t:

    x_{t-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps_hat + sigma_t z,  z ~ N(0, I)
    sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)

with eps_hat the (guided) model prediction at (x_t, t, c) and x0_hat = (x_t - sqrt(1 - abar_t)
eps_hat) / sqrt(abar_t) (the scheduler converts a v prediction). The trajectory keeps x_T ... x_0,
the timesteps and the conditioning: all that log N(x_{t-1}; mean(x_t, t, c), sigma_t^2 I) needs
(DDPO, Black et al. 2023). The sampled x_0 latents come back as group examples, which ``collate``
turns into a batch scored as Scores [C, n] (the Diffusion-DPO score of each sample).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mmalign.errors import ConfigError, DataError
from mmalign.protocol import Samples
from mmalign_diffusion import components as C
from mmalign_diffusion.batch import DiffusionBatch, DiffusionGroup
from mmalign_diffusion.encoding import caption_embeddings
from mmalign_diffusion.noise import batch_draws
from mmalign_diffusion.steps import collate_steps, conditioning, group_steps
from mmalign_diffusion.trajectory import step_log_prob, stochastic_steps
from mmalign_text.causal_lm import unwrap_wrappers

DECODE_CHUNK = 8  # images per VAE decode call: bounds the decoder's activation memory


@dataclass
class Trajectory:
    """What the sampler went through, on CPU. Row i * n + j is sample j of context i."""

    latents: Tensor  # [C*n, steps+1, c, h, w] x_T, ..., x_0 (float32)
    timesteps: Tensor  # [steps] long: step k goes from latents[:, k] (x_t, t = timesteps[k]) to latents[:, k+1]
    text: Tensor  # [C, L, D] caption embeddings (the plugin's text cache: the score's conditioning)
    pooled: Optional[Tensor]  # [C, P] SDXL pooled caption embedding; None for SD 1.5
    time_ids: Optional[Tensor]  # [6] SDXL micro-conditioning of every sample; None for SD 1.5
    negative_text: Optional[Tensor]  # [1, L, D] unconditional embedding of guidance; None without
    negative_pooled: Optional[Tensor]  # [1, P] SDXL, with guidance
    guidance_scale: float
    eta: float
    log_probs: Optional[Tensor] = None  # [C*n, steps] each step's log p as drawn (0: deterministic step)
    stochastic: Optional[Tensor] = None  # [steps] bool: the steps with sigma > 0 (a log-probability)


def ddim_scheduler(comps: C.Components, steps: int):
    """A DDIM scheduler over the pipeline's own noise schedule (betas, prediction type, spacing),
    with its timesteps set for ``steps`` steps: the one the sampler used, to recompute a step.
    The step from t = 0 (the last one with ``steps_offset: 0``, as tiny pipelines have) has
    sigma = 0: x_0 is then deterministic given x_t, and that step has no log-prob."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config((comps.pipeline_scheduler or comps.scheduler).config)
    scheduler.set_timesteps(steps)
    return scheduler


def sample(plugin, model: nn.Module, contexts: list[Any], n: int, generator: torch.Generator, *,
           steps: int = 20, guidance_scale: float = 1.0, eta: float = 1.0, score: str = "denoising",
           timestep_fraction: float = 1.0, **unknown: Any) -> Samples:
    """``n`` images for each context ({"prompt": caption}) from ``model`` (the UNet, LoRA-wrapped
    or not), starting noise and step noise drawn from ``generator``. Guidance > 1 is classifier-free
    guidance against the empty caption (SDXL: zero embeddings, as its pipelines do). ``score``: what
    the group examples train, "denoising" (the Diffusion-DPO score of the images) or "trajectory"
    (the log-probs of ``timestep_fraction`` of their steps: DDPO, mmalign_diffusion.steps)."""
    captions = _check(contexts, n, steps, guidance_scale, eta, unknown)
    if score == "trajectory" and not eta > 0:
        raise ConfigError(f"diffusion sample: score 'trajectory' needs eta > 0 (steps with a log-probability), got {eta!r}.")
    device = next(model.parameters()).device
    plugin._encoders_to(device)
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        with torch.no_grad():
            trajectory = _run(plugin, model, captions, n, generator, steps, float(guidance_scale), float(eta))
    finally:
        model.train(was_training)
    x0 = trajectory.latents[:, -1]
    images = decode_latents(plugin.comps, x0)
    responses = [images[i * n:(i + 1) * n] for i in range(len(captions))]
    examples = [DiffusionGroup(c, x0[i * n:(i + 1) * n].clone(), f"sample of context {i}",
                               group_steps(trajectory, i, n, timestep_fraction) if score == "trajectory" else None)
                for i, c in enumerate(captions)]
    return Samples(list(contexts), responses, examples, trajectory)


def _check(contexts: list[Any], n: int, steps: int, guidance_scale: float, eta: float,
           unknown: dict) -> list[str]:
    """The captions of ``contexts``, after checking the options."""
    if unknown:
        raise ConfigError(f"diffusion sample: unknown option '{sorted(unknown)[0]}'. Known: "
                          f"steps, guidance_scale, eta, score, timestep_fraction.")
    for name, value, low in (("n", n, 1), ("steps", steps, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"diffusion sample: {name} must be an integer >= {low}, got {value!r}.")
    if not isinstance(guidance_scale, (int, float)) or guidance_scale < 1:
        raise ConfigError(f"diffusion sample: guidance_scale must be a number >= 1 (1: no guidance), "
                          f"got {guidance_scale!r}.")
    if not isinstance(eta, (int, float)) or eta < 0:
        raise ConfigError(f"diffusion sample: eta must be a number >= 0 (1: DDPM-like steps, whose "
                          f"log-probs DDPO needs; 0: deterministic DDIM), got {eta!r}.")
    captions = []
    for i, context in enumerate(contexts):
        fields = getattr(context, "fields", context)  # a data record (the online source) or a mapping
        prompt = fields.get("prompt") if isinstance(fields, Mapping) else None
        if not isinstance(prompt, str):
            where = getattr(context, "where", f"context {i}")
            raise DataError(f"diffusion sample: {where} must be a mapping with a string \"prompt\" "
                            f"(the caption), got {fields!r:.80}.")
        captions.append(prompt)
    if not captions:
        raise DataError("diffusion sample: no contexts given.")
    return captions


def _conditioning(plugin, captions: list[str], guidance_scale: float) -> dict:
    """The Trajectory's conditioning fields, from the plugin's text cache (the same embeddings the
    score uses) on the encoders' device."""
    comps, (_, text_cache) = plugin.comps, plugin._caches()
    text, pooled = caption_embeddings(comps, text_cache, captions, plugin.device)
    sdxl = comps.architecture == "sdxl"
    res = comps.resolution
    time_ids = torch.tensor(C.time_ids((res, res), (0, 0), res), dtype=torch.float32) if sdxl else None
    negative_text = negative_pooled = None
    if guidance_scale > 1:
        if sdxl:  # force_zeros_for_empty_prompt, the SDXL pipelines' default
            negative_text, negative_pooled = torch.zeros_like(text[:1]), torch.zeros_like(pooled[:1])
        else:
            negative_text, _ = caption_embeddings(comps, text_cache, [""], plugin.device)
    return dict(text=text, pooled=pooled, time_ids=time_ids, negative_text=negative_text,
                negative_pooled=negative_pooled)


def unet_inputs(trajectory: Trajectory, n: int, device: torch.device, dtype: torch.dtype) -> dict:
    """UNet keyword inputs for the C*n rows (2*C*n with guidance: unconditional rows first)."""
    pooled = trajectory.pooled.repeat_interleave(n, 0) if trajectory.pooled is not None else None
    return conditioning(trajectory.text.repeat_interleave(n, 0), pooled, trajectory.time_ids,
                        trajectory.negative_text, trajectory.negative_pooled, device, dtype)


def guided_prediction(model: nn.Module, x: Tensor, t: Tensor, inputs: dict, guidance_scale: float) -> Tensor:
    """The model's prediction at (x_t, t), guided: uncond + g * (cond - uncond) when g > 1. [rows, c, h, w] fp32.
    ``t``: one timestep for every row, or one per row ([rows])."""
    dtype = inputs["encoder_hidden_states"].dtype
    guided = guidance_scale > 1
    x_in = torch.cat([x, x]) if guided else x
    t_in = t.expand(len(x_in)) if t.dim() == 0 else t.repeat(len(x_in) // len(t))
    out = model(x_in.to(dtype), t_in.to(x.device), **inputs).sample.float()
    if not guided:
        return out
    uncond, cond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def _run(plugin, model: nn.Module, captions: list[str], n: int, generator: torch.Generator,
         steps: int, guidance_scale: float, eta: float) -> Trajectory:
    comps, device = plugin.comps, plugin.device
    scheduler = ddim_scheduler(comps, steps)
    trajectory = Trajectory(None, scheduler.timesteps.clone(), **_conditioning(plugin, captions, guidance_scale),
                            guidance_scale=guidance_scale, eta=eta)
    dtype = next(p.dtype for p in unwrap_wrappers(model).parameters())
    inputs = unet_inputs(trajectory, n, device, dtype)
    shape = (len(captions) * n, comps.vae.config.latent_channels, comps.latent_size, comps.latent_size)
    # draws on the generator's device, then moved: the same generator gives the same samples anywhere
    draw = lambda: torch.randn(shape, generator=generator, device=generator.device).to(device)  # noqa: E731
    x = draw() * scheduler.init_noise_sigma
    # kept on the device and moved to the CPU once: a copy per step would wait for the GPU every step
    path, log_probs = [x.float()], []
    stochastic = stochastic_steps(scheduler, eta)
    for k, t in enumerate(scheduler.timesteps):
        prediction = guided_prediction(model, scheduler.scale_model_input(x, t), t, inputs, guidance_scale)
        noise = draw() if eta > 0 else None
        x_prev = scheduler.step(prediction, t, x, eta=eta, variance_noise=noise).prev_sample
        log_probs.append(step_log_prob(scheduler, prediction, t, x, x_prev, eta) if stochastic[k]
                         else torch.zeros(len(x), device=x.device))
        x = x_prev
        path.append(x.float())
    trajectory.latents, trajectory.log_probs = torch.stack(path, 1).cpu(), torch.stack(log_probs, 1).cpu()
    trajectory.stochastic = stochastic
    return trajectory


def trajectory_log_probs(plugin, model: nn.Module, trajectory: Trajectory, n: int) -> tuple[Tensor, Tensor]:
    """Every step's log p(x_{k+1} | x_k, c) of the recorded trajectory under ``model``
    (:mod:`mmalign_diffusion.trajectory`): [C*n, steps] fp32, 0 where a step is deterministic, and
    the [steps] ``stochastic`` mask. Gradients flow to ``model`` when enabled (the policy's side of
    DDPO's ratio); an unchanged model gives back ``trajectory.log_probs`` (ratio 1)."""
    device = plugin.device
    scheduler = ddim_scheduler(plugin.comps, len(trajectory.timesteps))
    stochastic = stochastic_steps(scheduler, trajectory.eta)
    dtype = next(p.dtype for p in unwrap_wrappers(model).parameters())
    inputs = unet_inputs(trajectory, n, device, dtype)
    log_probs = []
    for k, t in enumerate(scheduler.timesteps):
        if not stochastic[k]:
            log_probs.append(torch.zeros(trajectory.latents.shape[0], device=device))
            continue
        x_t = trajectory.latents[:, k].to(device)
        prediction = guided_prediction(model, scheduler.scale_model_input(x_t, t), t, inputs,
                                       trajectory.guidance_scale)
        log_probs.append(step_log_prob(scheduler, prediction, t, x_t, trajectory.latents[:, k + 1].to(device),
                                       trajectory.eta))
    return torch.stack(log_probs, 1), stochastic


@torch.no_grad()
def decode_latents(comps: C.Components, latents: Tensor) -> list:
    """Scaled latents [N, c, h, w] -> N PIL images, as the pipelines' VAE decode and postprocess."""
    from diffusers.image_processor import VaeImageProcessor

    vae = comps.vae
    processor = VaeImageProcessor(vae_scale_factor=comps.vae_scale_factor)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = []
    for start in range(0, len(latents), DECODE_CHUNK):
        z = latents[start:start + DECODE_CHUNK].to(vae.device, vae.dtype) / vae.config.scaling_factor + shift
        images.extend(processor.postprocess(vae.decode(z).sample.float().cpu(), output_type="pil"))
    return images


def collate_groups(plugin, groups: list[DiffusionGroup], generator: Optional[torch.Generator]) -> DiffusionBatch:
    """Sampled groups -> a batch of n * C rows, response-major (row j * C + i: sample j of context i),
    one noise draw and timestep per group; the latents are the samples' own, so encode only embeds
    the captions. Groups that carry their trajectories (score "trajectory") bring them along, with
    the steps each row trains drawn here (mmalign_diffusion.steps). SDXL micro-conditioning: uncropped, at the training resolution (as sampled)."""
    n = groups[0].latents.shape[0]
    if any(g.latents.shape[0] != n for g in groups):
        raise DataError(f"diffusion collate: sampled groups of different sizes "
                        f"({sorted({g.latents.shape[0] for g in groups})}); a batch needs the same n.")
    noise, timesteps, _, _ = batch_draws(plugin, groups, generator)
    latents = torch.stack([g.latents for g in groups], 1).flatten(0, 1).float()
    time_ids = None
    if plugin.comps.architecture == "sdxl":
        res = plugin.comps.resolution
        time_ids = torch.tensor([C.time_ids((res, res), (0, 0), res)] * len(latents), dtype=torch.float32)
    steps = collate_steps(groups, generator) if groups[0].steps is not None else None
    return DiffusionBatch([g.caption for g in groups], [], [], noise, timesteps, time_ids, paired=False,
                          latents=latents, steps=steps)
