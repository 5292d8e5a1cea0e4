"""The frozen encoders behind the diffusion plugin's ``encode``: VAE latents of images and text
embeddings of captions, looked up in content-keyed caches (mmalign_diffusion.cache) and computed
on a miss.

One image per VAE call and one caption per text-encoder call: batched kernels round differently
with the batch size (~1e-7, magnified by beta ~ 5000), and a record's cached encoding must not
depend on which batch first missed the cache (exact resume, DDP)."""

from __future__ import annotations

import hashlib
from typing import Optional

import torch
from torch import Tensor

from mmalign_diffusion import components as C
from mmalign_diffusion.cache import TensorCache
from mmalign_diffusion.records import ImageRef, View, load_pixels


def image_latents(comps: C.Components, cache: TensorCache, images: list[ImageRef], views: list[View],
                  device: torch.device) -> Tensor:
    """Scaled VAE latents of each image in its view: [R, C, h, w] float32 on CPU."""
    res = comps.resolution
    keys = [f"{ref.digest()}-{res}-{v.top}-{v.left}-{int(v.flip)}" for ref, v in zip(images, views)]

    def encode(indices: list[int]) -> list[tuple[Tensor, ...]]:
        return [(C.encode_images(comps, load_pixels(images[i], res, views[i])[None].to(device)).float()[0],)
                for i in indices]

    return torch.stack([v[0] for v in cache.get_many(keys, encode)])


def caption_embeddings(comps: C.Components, cache: TensorCache, captions: list[str],
                       device: torch.device) -> tuple[Tensor, Optional[Tensor]]:
    """(text [N, L, D], pooled [N, P] for SDXL else None), float32 on CPU."""
    def embed(indices: list[int]) -> list[tuple[Tensor, ...]]:
        out = []
        for i in indices:
            states, pooled = C.encode_text(comps, [captions[i]], device)
            out.append((states[0].float(),) if pooled is None else (states[0].float(), pooled[0].float()))
        return out

    keys = [hashlib.sha256(c.encode()).hexdigest() for c in captions]
    embedded = cache.get_many(keys, embed)
    text = torch.stack([e[0] for e in embedded])
    pooled = torch.stack([e[1] for e in embedded]) if comps.architecture == "sdxl" else None
    return text, pooled
