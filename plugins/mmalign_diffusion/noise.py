"""The randomness of a diffusion batch, drawn in ``collate``: per pair (or sampled group) one noise
tensor, one timestep, one horizontal flip and one crop position. ``noise: per_step`` draws them
from the run's generator; ``per_example`` from a generator seeded by the pair's caption, content
and ``noise_seed``, so a pair gets the same draw in every epoch and every batch."""

from __future__ import annotations

import hashlib
from typing import Optional

import torch
from torch import Tensor

from mmalign_diffusion.batch import DiffusionGroup


def batch_draws(plugin, examples: list, generator: Optional[torch.Generator]) -> tuple[Tensor, ...]:
    """(noise [B, C, h, w], timesteps [B], flips [B], crop positions [B]), per noise mode."""
    comps = plugin.comps
    shape = (comps.vae.config.latent_channels, comps.latent_size, comps.latent_size)
    steps = plugin.scheduler.config.num_train_timesteps
    if plugin.options["noise"] == "per_example":
        seed = plugin.options["noise_seed"]
        draws = [one_draw(shape, steps, torch.Generator().manual_seed(pair_seed(e, seed))) for e in examples]
        return tuple(torch.stack(d) for d in zip(*draws))
    if generator is None:
        raise ValueError("collate with noise: per_step needs the run's generator")
    return one_draw(shape, steps, generator, (len(examples),))


def one_draw(shape: tuple, steps: int, generator: torch.Generator, size: tuple = ()):
    """(noise, timestep, flip, crop position) drawn in this order: one set, or ``size`` of them."""
    return (torch.randn((*size, *shape), generator=generator), torch.randint(0, steps, size, generator=generator),
            torch.rand(size, generator=generator) < 0.5, torch.rand(size, generator=generator))


def pair_seed(e, noise_seed: int) -> int:
    """A pair's (or sampled group's) own seed: sha256 of its caption, its content and ``noise_seed``."""
    content = [e.digest(), ""] if isinstance(e, DiffusionGroup) else \
        [e.chosen.digest(), e.rejected.digest() if e.rejected is not None else ""]
    parts = [e.caption, *content, str(noise_seed)]
    return int(hashlib.sha256("\0".join(parts).encode()).hexdigest()[:15], 16)
