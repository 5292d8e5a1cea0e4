"""Shared helpers of the diffusion plugin's tests: tiny configs and a few world images."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from mmalign.config import load_config
from mmalign_formats import read_jsonl
from mmalign_diffusion import world
from mmalign_diffusion.reward import DiffusionReward


def tiny(arch: str = "sdxl", prediction: str = "epsilon") -> dict:
    return {"architecture": arch, "resolution": 32, "scheduler": {"prediction_type": prediction}}


def make_reward(arch="sdxl", prediction="epsilon", lora=None, **options) -> DiffusionReward:
    model = {"reward": "diffusion", "tiny": tiny(arch, prediction), "options": options}
    if lora:
        model["lora"] = lora
    cfg = load_config(data={"model": model})
    return DiffusionReward(cfg.model, cfg.data)


def pairs_file(directory: Path, n: int = 3, seed: int = 0) -> Path:
    path = directory / f"pairs-{seed}.jsonl"
    if not path.exists():
        world.write_pair_data(directory, f"pairs-{seed}", n, seed)
    return path


def examples(reward, path: Path, paired: bool = True):
    return [reward.prepare(r, paired=paired) for r in read_jsonl(path)]


def perturbed(model: torch.nn.Module, scale: float = 0.02, seed: int = 1) -> torch.nn.Module:
    """A copy with every weight moved by small Gaussian noise: a reference that differs."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other
