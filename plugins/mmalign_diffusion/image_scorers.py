"""Image reward functions for online runs (DDPO, GRPO, online Diffusion-DPO) and Best-of-N,
loaded from local paths (or hub ids) as transformers loads them:

- ``clip_preference``: a PickScore-style preference model (Kirstain et al. 2023, "Pick-a-Pic"), a
  CLIP model fine-tuned on human preferences. The reward of image x for prompt c is the model's
  scaled cosine similarity

      r(c, x) = exp(logit_scale) * <E_text(c) / |E_text(c)|, E_image(x) / |E_image(x)|>

  (options: ``model``, the CLIP directory; ``processor``, where its tokenizer and image processor
  are, by default ``model``: PickScore_v1 keeps them in the CLIP-ViT-H-14 repository it was tuned
  from).
- ``aesthetic``: a LAION-aesthetics-style predictor (the "improved aesthetic predictor" that DDPO
  rewards with): a chain of linear layers on the L2-normalized CLIP image embedding,

      r(x) = W_k ... W_1 (E_image(x) / |E_image(x)|) (+ biases; no activation, as LAION's head)

  (options: ``model``, the CLIP directory; ``head``, a safetensors file of the head's
  ``layers.<i>.weight`` / ``layers.<i>.bias``, the keys of LAION's checkpoint: convert its .pth once
  with ``save_file(torch.load(pth, weights_only=True), "head.safetensors")``).

Both take ``device`` (default cpu) and ``batch_size`` (default 16) and score without gradients.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from mmalign.errors import ConfigError


def _load_clip(model: str, processor: str | None, device: str):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    try:
        clip = CLIPModel.from_pretrained(model).to(device).eval()
        source = processor or model
        return clip, AutoTokenizer.from_pretrained(source), AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise ConfigError(f"scorer: cannot load a CLIP model and its processor from '{model}'"
                          f"{f' / {processor}' if processor else ''} ({first}). Give a directory written by "
                          f"CLIPModel.save_pretrained (and its tokenizer and image processor).") from None


@torch.no_grad()
def _image_embeddings(clip: nn.Module, image_processor, images: list, device: str) -> Tensor:
    pixels = image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    features = clip.get_image_features(pixel_values=pixels.to(device))
    features = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
    return features / features.norm(dim=-1, keepdim=True)


@torch.no_grad()
def _text_embeddings(clip: nn.Module, tokenizer, prompts: list[str], device: str) -> Tensor:
    tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
    features = clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    features = getattr(features, "pooler_output", features)
    return features / features.norm(dim=-1, keepdim=True)


def clip_preference_scorer(model: str, processor: str | None = None, device: str = "cpu",
                           batch_size: int = 16) -> Callable[[list, list], list[float]]:
    """``scorer(prompts, images) -> [r(c, x)]``, the PickScore formula of the module docstring."""
    clip, tokenizer, image_processor = _load_clip(model, processor, device)

    def score(prompts: list[str], responses: list) -> list[float]:
        out = []
        for start in range(0, len(responses), batch_size):
            text = _text_embeddings(clip, tokenizer, prompts[start:start + batch_size], device)
            image = _image_embeddings(clip, image_processor, responses[start:start + batch_size], device)
            out += (clip.logit_scale.exp() * (text * image).sum(-1)).tolist()
        return out

    return score


def linear_head(path: str | Path) -> nn.Sequential:
    """LAION's aesthetic head from a safetensors file: its linear layers in index order."""
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except (OSError, ValueError) as err:
        raise ConfigError(f"scorer aesthetic: head '{path}' is not a readable safetensors file ({err}).") from None
    indices = sorted({int(m.group(1)) for k in weights if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
    if not indices:
        raise ConfigError(f"scorer aesthetic: head '{path}' has no layers.<i>.weight tensors (LAION's keys).")
    layers = []
    for i in indices:
        out_features, in_features = weights[f"layers.{i}.weight"].shape
        layer = nn.Linear(in_features, out_features, bias=f"layers.{i}.bias" in weights)
        layer.load_state_dict({k.split(".")[-1]: v for k, v in weights.items() if k.startswith(f"layers.{i}.")})
        layers.append(layer)
    if layers[-1].out_features != 1:
        raise ConfigError(f"scorer aesthetic: head '{path}' ends in {layers[-1].out_features} outputs, not 1.")
    return nn.Sequential(*layers).eval()


def aesthetic_scorer(model: str, head: str, device: str = "cpu",
                     batch_size: int = 16) -> Callable[[list, list], list[float]]:
    """``scorer(prompts, images) -> [r(x)]``, the LAION head of the module docstring (the prompt
    is not used)."""
    clip, _, image_processor = _load_clip(model, None, device)
    mlp = linear_head(head).to(device)
    if mlp[0].in_features != clip.config.projection_dim:
        raise ConfigError(f"scorer aesthetic: head '{head}' takes {mlp[0].in_features} features and the CLIP "
                          f"model gives {clip.config.projection_dim}: use the CLIP the head was trained on.")

    @torch.no_grad()
    def score(prompts: list[str], responses: list) -> list[float]:
        out = []
        for start in range(0, len(responses), batch_size):
            out += mlp(_image_embeddings(clip, image_processor, responses[start:start + batch_size], device))[:, 0].tolist()
        return out

    return score
