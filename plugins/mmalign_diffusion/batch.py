"""What the diffusion plugin's ``collate`` gives and takes: a batch of rows, and the group example
that the sampler hands back (its images kept as the latents it produced)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from mmalign_diffusion.records import ImageRef, View


@dataclass
class DiffusionBatch:
    """B contexts with k responses each, R = k * B rows in response-major order (row j * B + i is
    response j of context i): k = 1 (unpaired), 2 (B chosen, then B rejected) or n (sampled groups).
    The score is [B, k]."""

    captions: list[str]  # [B]
    images: list[ImageRef]  # [R]; empty for sampled groups (their latents come with them)
    views: list[View]  # [R] crop and flip of each image; empty for sampled groups
    noise: Tensor  # [B, C, h, w] one draw per context, shared by its k rows
    timesteps: Tensor  # [B] long, one per context
    time_ids: Optional[Tensor]  # [R, 6] SDXL micro-conditioning; None for SD 1.5
    paired: bool
    latents: Optional[Tensor] = None  # [R, C, h, w] set by encode (cached VAE latents) or collate (groups)
    text: Optional[Tensor] = None  # [B, L, D] set by encode (cached text embeddings)
    pooled: Optional[Tensor] = None  # [B, P] SDXL pooled text embedding
    steps: Optional["SampledSteps"] = None  # [R] rows' trajectories: scored per denoising step (DDPO)


def image_counts(batch: DiffusionBatch) -> dict[str, int]:
    """The plugin's ``batch_counts``: the images a scoring pass denoises, one latent row each (a
    pair's two, a sampled group's n)."""
    return {"images": batch.latents.shape[0]} if batch.latents is not None else {}


@dataclass
class DiffusionGroup:
    """n images sampled for one caption, as the VAE latents x_0 the sampler ended on: decoding them
    to pixels and encoding again would not give them back, and the score is of the sample itself."""

    caption: str
    latents: Tensor  # [n, C, h, w] float32, on CPU
    where: str = "sampled"
    steps: Optional["SampledSteps"] = None  # the n trajectories, when they are what trains (DDPO)

    def digest(self) -> str:
        """sha256 of the latents' bytes: the group's content, as an image's digest is."""
        return hashlib.sha256(self.latents.contiguous().numpy().tobytes()).hexdigest()


@dataclass
class SampledSteps:
    """Sampled DDIM trajectories as training data (DDPO): in a group example its n rows, in a batch
    its R rows (response-major, as the latents) with the steps each row trains."""

    latents: Tensor  # [rows, S+1, C, h, w] x_T, ..., x_0 (step k goes from latents[:, k] to latents[:, k+1])
    timesteps: Tensor  # [S] long
    trainable: Tensor  # [S] bool: steps with sigma > 0, which have a log-probability
    log_probs: Tensor  # [rows, S] each step's log p as drawn (0 on deterministic steps)
    negative_text: Optional[Tensor]  # [1, L, D] classifier-free guidance's unconditional embedding; None without
    negative_pooled: Optional[Tensor]  # [1, P] SDXL, with guidance
    guidance_scale: float
    eta: float
    timestep_fraction: float  # share of the trainable steps each row trains (DDPO's timestep_fraction)
    selected: Optional[Tensor] = None  # [rows, U] long: indices of the steps each row trains (drawn in collate)


def content_digest(examples: list) -> str:
    """sha256 over the images' own digests, in order (a group's sampled images by its digest; a
    pair's chosen then rejected, "-" for a missing one)."""
    h = hashlib.sha256()
    for e in examples:
        if isinstance(e, DiffusionGroup):
            h.update(e.digest().encode())
            continue
        for ref in (e.chosen, e.rejected):
            h.update((ref.digest() if ref is not None else "-").encode())
    return h.hexdigest()
