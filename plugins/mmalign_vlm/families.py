"""What differs between VLM families, in one small table.

For each supported ``config.model_type``: the placeholder a string prompt gets per image, the
processor outputs that belong to images (passed through to the model's forward on the plain path),
how one example's image inputs are batched with others', how the projected image features of a
batch come out per example (for once-per-pair encoding), and whether positions are M-RoPE
(Qwen2-VL's 3D ``get_rope_index``; every other family counts 1D positions).

Once-per-pair encoding runs the vision tower on each example's images once, splits the features
per example and scatters them into the image placeholder positions of the rows that hold that
example, exactly as the model's own forward does with ``masked_scatter`` (tested against the
model's own forward to 1e-5 for every family).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from mmalign.errors import ConfigError


def _pad_cat(tensors: list[Tensor], dim: int = 1) -> Tensor:
    """Concatenate along dim 0, zero-padding ``dim`` to the longest (the processors' own padding:
    LLaVA-NeXT pads patches, Idefics3 pads tiles with all-zero images the model drops)."""
    width = max(t.shape[dim] for t in tensors)
    padded = []
    for t in tensors:
        shape = list(t.shape)
        shape[dim] = width - t.shape[dim]
        padded.append(torch.cat([t, t.new_zeros(shape)], dim=dim) if shape[dim] else t)
    return torch.cat(padded)


def _batch_llava(groups: list[dict]) -> dict:
    return {"pixel_values": torch.cat([g["pixel_values"] for g in groups])}


def _batch_anyres(groups: list[dict]) -> dict:
    """LLaVA-NeXT / OneVision: patches per image vary with the aspect ratio; image_sizes tell the
    model how many are real. OneVision also takes the number of images per row (multi-image rows
    skip anyres patching)."""
    out = {"pixel_values": _pad_cat([g["pixel_values"] for g in groups]),
           "image_sizes": torch.cat([g["image_sizes"] for g in groups])}
    if "batch_num_images" in groups[0]:
        out["batch_num_images"] = torch.cat([g["batch_num_images"] for g in groups])
    return out


def _batch_qwen(groups: list[dict]) -> dict:
    """Qwen2-VL: flattened patches of every image, and each image's (t, h, w) grid."""
    return {"pixel_values": torch.cat([g["pixel_values"] for g in groups]),
            "image_grid_thw": torch.cat([g["image_grid_thw"] for g in groups])}


def _batch_idefics3(groups: list[dict]) -> dict:
    """Idefics3: one row of tiles per example [1, tiles, C, H, W], padded with all-zero tiles."""
    return {"pixel_values": _pad_cat([g["pixel_values"] for g in groups]),
            "pixel_attention_mask": _pad_cat([g["pixel_attention_mask"] for g in groups])}


def _split(feats: list[Tensor], counts: list[int]) -> list[Tensor]:
    """Per-image features [n_i, H] -> per-example features (the example's images in order)."""
    out, start = [], 0
    for n in counts:
        out.append(torch.cat([f.reshape(-1, f.shape[-1]) for f in feats[start:start + n]]))
        start += n
    return out


def _pooled(out) -> list[Tensor]:
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return list(feats)


def _features_llava(base: nn.Module, inputs: dict, counts: list[int]) -> list[Tensor]:
    return _split(_pooled(base.get_image_features(pixel_values=inputs["pixel_values"])), counts)


def _features_anyres(base: nn.Module, inputs: dict, counts: list[int]) -> list[Tensor]:
    kwargs = {"batch_num_images": inputs["batch_num_images"]} if "batch_num_images" in inputs else {}
    out = base.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], **kwargs)
    return _split(_pooled(out), counts)


def _features_qwen(base: nn.Module, inputs: dict, counts: list[int]) -> list[Tensor]:
    out = base.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    return _split(_pooled(out), counts)


def _features_idefics3(base: nn.Module, inputs: dict, counts: list[int]) -> list[Tensor]:
    """Tiles [G, T, C, H, W] (one row of tiles per example; all-zero padding tiles are dropped by
    the model), features already split per example."""
    out = base.get_image_features(pixel_values=inputs["pixel_values"],
                                  pixel_attention_mask=inputs["pixel_attention_mask"])
    return [f.reshape(-1, f.shape[-1]) for f in _pooled(out)]


@dataclass(frozen=True)
class Family:
    name: str
    placeholder: str  # put in front of a string prompt per image when the prompt has none
    image_keys: tuple[str, ...]  # processor outputs for the images, passed to the model's forward
    batch: Callable[[list[dict]], dict]  # per-example image inputs -> one batch of them
    features: Callable[[nn.Module, dict, list[int]], list[Tensor]]  # -> per-example [n, H]
    tower: str  # the vision encoder, under the model's .model (frozen unless train_vision_tower)
    projector: str  # the projector / connector (trained unless train_projector: false)
    nested_images: bool = False  # the processor takes images as one list per sample
    mrope: bool = False  # 3D positions from get_rope_index


_ANYRES = ("pixel_values", "image_sizes")
_LLAVA = ("vision_tower", "multi_modal_projector")
FAMILIES = {
    "llava": Family("llava", "<image>\n", ("pixel_values",), _batch_llava, _features_llava, *_LLAVA),
    "llava_next": Family("llava_next", "<image>\n", _ANYRES, _batch_anyres, _features_anyres, *_LLAVA),
    "llava_onevision": Family("llava_onevision", "<image>\n", _ANYRES + ("batch_num_images",), _batch_anyres,
                              _features_anyres, *_LLAVA),
    "qwen2_vl": Family("qwen2_vl", "<|vision_start|><|image_pad|><|vision_end|>", ("pixel_values", "image_grid_thw"),
                       _batch_qwen, _features_qwen, "visual", "visual.merger", mrope=True),
    "idefics3": Family("idefics3", "<image>", ("pixel_values", "pixel_attention_mask"), _batch_idefics3,
                       _features_idefics3, "vision_model", "connector", nested_images=True),
}
FAMILIES["qwen2_5_vl"] = Family(**{**FAMILIES["qwen2_vl"].__dict__, "name": "qwen2_5_vl"})


def family_of(model_type: str, model_class: str) -> Family:
    """The family of a ``config.model_type``, or a ConfigError naming the model class."""
    if model_type not in FAMILIES:
        raise ConfigError(f"model: {model_class} (model_type '{model_type}') is not a supported "
                          f"vision-language model. The vlm plugin supports: {', '.join(sorted(FAMILIES))}. "
                          f"Use one of those, or add a row for it to mmalign_vlm/families.py.")
    return FAMILIES[model_type]


def rope_positions(base: nn.Module, input_ids: Tensor, image_grid_thw: Tensor, attention_mask: Tensor,
                   image_token_id: int) -> Tensor:
    """Qwen2-VL's M-RoPE positions [3, R, T] for right-padded rows (images in row order); text
    tokens count on in all three axes, image tokens get (t, h, w) grid positions."""
    token_types = (input_ids == image_token_id).int()
    model = base.model if hasattr(base.model, "get_rope_index") else base
    positions, _ = model.get_rope_index(input_ids, mm_token_type_ids=token_types, image_grid_thw=image_grid_thw,
                                        attention_mask=attention_mask)
    return positions
