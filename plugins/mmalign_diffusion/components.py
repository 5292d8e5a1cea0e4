"""The frozen parts of a Stable Diffusion pipeline (tokenizers, text encoders, VAE, noise scheduler)
and the UNet: loaded from a diffusers pipeline directory, or built tiny from ``model.tiny``.

Two architectures are told apart by their text encoders:

- ``sd15``: one CLIP text encoder; the condition is its last hidden state.
- ``sdxl``: two (CLIPTextModel, CLIPTextModelWithProjection); the condition is the penultimate
  hidden states of both, concatenated on the feature axis, plus the pooled (projected) embedding of
  the second and the micro-conditioning ``add_time_ids`` (original size, crop top-left, target size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mmalign.errors import ConfigError
from mmalign.in_memory import held

ARCHITECTURES = ("sd15", "sdxl")

# Words of the synthetic image world (mmalign_diffusion.world) plus a few fillers: the vocabulary
# of the word-level tokenizer built for tiny models.
TINY_VOCAB = ["a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "image",
              "red", "green", "blue", "yellow", "magenta", "cyan", "white", "black", "grey", "orange",
              "circle", "square", "triangle", "ring", "cross", "bar", "small", "large", "bright",
              "dark", "background", "cat", "dog", "tree", "house", "car", "sky"]

DEFAULT_TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                         attention_head_dim=8, norm_num_groups=8)
# 4x downsampling: 32x32 images -> 4x8x8 latents (a real SD VAE downsamples 8x).
DEFAULT_TINY_VAE = dict(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4,
                        layers_per_block=1, norm_num_groups=8)
DEFAULT_TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, projection_dim=32)
TINY_KEYS = {"architecture", "resolution", "seed", "unet", "vae", "text_encoder", "scheduler",
             "max_length"}


@dataclass
class Components:
    """Everything but the UNet, and what the UNet needs to know about it."""

    architecture: str  # "sd15" or "sdxl"
    tokenizers: list
    text_encoders: list[nn.Module]
    vae: nn.Module
    scheduler: Any  # a DDPMScheduler (training noise schedule)
    resolution: int  # image side in pixels
    source: Optional[str] = None  # the pipeline directory, None for tiny
    extra: dict = field(default_factory=dict)
    # the pipeline's own (sampling) scheduler, class and config as loaded, written back on save;
    # None for tiny components, whose pipelines keep the training DDPMScheduler
    pipeline_scheduler: Any = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor

    def frozen(self) -> list[nn.Module]:
        return [*self.text_encoders, self.vae]


def detect_architecture(model_index: dict) -> str:
    """sdxl when the pipeline's model_index.json lists a second text encoder."""
    return "sdxl" if model_index.get("text_encoder_2") else "sd15"


def quiet_loading() -> None:
    """Per-component "Loading weights" bars drown the training progress bar on tiny models."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


def load_components(path: str, resolution: Optional[int]) -> Components:
    """Tokenizers, text encoders, VAE and scheduler of a diffusers pipeline directory (or hub id
    available offline), each from its subfolder with plain ``from_pretrained``."""
    from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    if held(path) is not None:
        from mmalign_diffusion.passed import components_of, held_pipeline

        return components_of(held_pipeline(path), resolution)
    try:
        index = DiffusionPipeline.load_config(path)  # model_index.json
        arch = detect_architecture(index)
        tokenizers = [AutoTokenizer.from_pretrained(path, subfolder="tokenizer")]
        encoders: list[nn.Module] = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder")]
        if arch == "sdxl":
            tokenizers.append(AutoTokenizer.from_pretrained(path, subfolder="tokenizer_2"))
            encoders.append(CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2"))
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        sampler = load_pipeline_scheduler(path, index)
        unet_config = UNet2DConditionModel.load_config(path, subfolder="unet")
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.name_or_path: cannot load a Stable Diffusion pipeline from '{path}' "
                          f"({e}). Pass a diffusers pipeline directory with subfolders unet, vae, "
                          f"text_encoder(_2), tokenizer(_2) and scheduler.") from None
    # Training adds noise with the DDPM forward process of the same betas and prediction type
    # (Diffusion-DPO trains as the model was trained); the saved pipeline keeps its own sampler.
    scheduler = DDPMScheduler.from_config(sampler.config)
    comps = Components(arch, tokenizers, encoders, vae, scheduler, 0, source=path,
                       pipeline_scheduler=sampler)
    comps.resolution = resolution or unet_config["sample_size"] * comps.vae_scale_factor
    return _freeze(comps)


def load_pipeline_scheduler(path: str, model_index: dict):
    """The pipeline's scheduler with the class its model_index.json names (EulerDiscreteScheduler
    for SDXL base, PNDMScheduler for SD 1.5, ...), as ``DiffusionPipeline.from_pretrained`` loads it."""
    import diffusers

    library, name = model_index["scheduler"]
    if library != "diffusers" or not hasattr(diffusers, name):
        raise ValueError(f"model_index.json names the scheduler {library}.{name}, not a diffusers scheduler")
    return getattr(diffusers, name).from_pretrained(path, subfolder="scheduler")


def _freeze(comps: Components) -> Components:
    for module in comps.frozen():
        module.requires_grad_(False)
        module.eval()
    return comps


def build_tiny_tokenizer(max_length: int):
    """A word-level tokenizer over TINY_VOCAB (unknown words -> <unk>), wrapped so that
    ``AutoTokenizer.from_pretrained`` reloads it from a saved pipeline. It adds <bos> ... <eos>
    like CLIP's tokenizer, and CLIP's pooled output reads the <eos> position."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + TINY_VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>", unk_token="<unk>", model_max_length=max_length)
    return tok


def _merge(defaults: dict, overrides: Any, key: str) -> dict:
    if overrides is None:
        return dict(defaults)
    if not isinstance(overrides, dict):
        raise ConfigError(f"model.tiny.{key} must be a mapping of keyword arguments, got "
                          f"{type(overrides).__name__}.")
    return {**defaults, **overrides}


def build_tiny(tiny: dict) -> tuple[Components, nn.Module]:
    """Tiny components and UNet from ``model.tiny``, initialized from ``tiny.seed`` so that every
    build of the same config gives the same weights (the frozen text encoders and VAE must agree
    between the run that trains and the run that resumes or evaluates)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unknown = set(tiny) - TINY_KEYS
    if unknown:
        raise ConfigError(f"model.tiny: unknown key '{sorted(unknown)[0]}'. Known keys: "
                          f"{', '.join(sorted(TINY_KEYS))}.")
    arch = tiny.get("architecture", "sdxl")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.tiny.architecture must be one of {', '.join(ARCHITECTURES)}, got {arch!r}.")
    max_length = int(tiny.get("max_length", 12))
    tok = build_tiny_tokenizer(max_length)
    text_kw = _merge(DEFAULT_TINY_TEXT, tiny.get("text_encoder"), "text_encoder")
    text_kw.update(vocab_size=len(tok), max_position_embeddings=max_length, pad_token_id=0,
                   bos_token_id=1, eos_token_id=2)
    vae_kw = _merge(DEFAULT_TINY_VAE, tiny.get("vae"), "vae")
    unet_kw = _merge(DEFAULT_TINY_UNET, tiny.get("unet"), "unet")
    sched_kw = _merge(dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                           prediction_type="epsilon"), tiny.get("scheduler"), "scheduler")
    n_down = len(vae_kw["block_out_channels"]) - 1
    resolution = int(tiny.get("resolution", 32))
    unet_kw.setdefault("sample_size", resolution // 2 ** n_down)
    unet_kw.setdefault("in_channels", vae_kw["latent_channels"])
    unet_kw.setdefault("out_channels", vae_kw["latent_channels"])
    vae_kw.setdefault("sample_size", resolution)
    hidden = text_kw["hidden_size"]
    if arch == "sdxl":
        unet_kw.setdefault("cross_attention_dim", 2 * hidden)
        unet_kw.setdefault("addition_embed_type", "text_time")
        unet_kw.setdefault("addition_time_embed_dim", 8)
        unet_kw.setdefault("projection_class_embeddings_input_dim",
                           6 * unet_kw["addition_time_embed_dim"] + text_kw["projection_dim"])
    else:
        unet_kw.setdefault("cross_attention_dim", hidden)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(tiny.get("seed", 0)))
            text_config = CLIPTextConfig(**text_kw)
            encoders: list[nn.Module] = [CLIPTextModel(text_config)]
            if arch == "sdxl":
                encoders.append(CLIPTextModelWithProjection(text_config))
            vae = AutoencoderKL(**vae_kw)
            unet = UNet2DConditionModel(**unet_kw)
        scheduler = DDPMScheduler(**sched_kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.tiny: {e}. model.tiny.unet / vae / text_encoder / scheduler hold "
                          f"keyword arguments of UNet2DConditionModel / AutoencoderKL / "
                          f"CLIPTextConfig / DDPMScheduler.") from None
    tokenizers = [tok] if arch == "sd15" else [tok, build_tiny_tokenizer(max_length)]
    comps = Components(arch, tokenizers, encoders, vae, scheduler, resolution)
    return _freeze(comps), unet


def load_unet(path: str) -> nn.Module:
    """A UNet from a pipeline directory (subfolder ``unet``) or a UNet directory."""
    from diffusers import UNet2DConditionModel

    if held(path) is not None:  # a pipeline passed to mmalign.train: its own UNet, trained in place
        from mmalign_diffusion.passed import held_pipeline

        return held_pipeline(path).unet
    root = Path(path)
    sub = "unet" if (root / "unet" / "config.json").exists() or not (root / "config.json").exists() else None
    try:
        return UNet2DConditionModel.from_pretrained(path, subfolder=sub)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a UNet2DConditionModel from '{path}' ({e}). Pass a "
                          f"diffusers pipeline directory (with unet/) or a UNet directory.") from None


def make_pipeline(comps: Components, unet: nn.Module):
    """A diffusers StableDiffusion(XL)Pipeline over these components and ``unet``, with the input
    pipeline's own scheduler (the training DDPMScheduler only for tiny components)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = comps.pipeline_scheduler or comps.scheduler
    if comps.architecture == "sdxl":
        return StableDiffusionXLPipeline(vae=comps.vae, text_encoder=comps.text_encoders[0],
                                         text_encoder_2=comps.text_encoders[1],
                                         tokenizer=comps.tokenizers[0], tokenizer_2=comps.tokenizers[1],
                                         unet=unet, scheduler=scheduler)
    return StableDiffusionPipeline(vae=comps.vae, text_encoder=comps.text_encoders[0],
                                   tokenizer=comps.tokenizers[0], unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@torch.no_grad()
def encode_text(comps: Components, captions: list[str], device: torch.device) -> tuple[Tensor, Optional[Tensor]]:
    """Captions -> (encoder_hidden_states [N, L, D], pooled [N, P] or None), as the pipelines do.

    sd15: the text encoder's last hidden state. sdxl: penultimate hidden states of both encoders
    concatenated on D, and the projected pooled embedding of the second encoder."""
    states, pooled = [], None
    for tok, enc in zip(comps.tokenizers, comps.text_encoders):
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        if comps.architecture == "sd15":
            states.append(enc(ids)[0])
        else:
            out = enc(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # text_embeds of CLIPTextModelWithProjection (the last encoder)
    return torch.cat(states, dim=-1), pooled


@torch.no_grad()
def encode_images(comps: Components, pixels: Tensor) -> Tensor:
    """Pixels in [-1, 1], [N, 3, H, W] -> scaled latents [N, C, H/f, W/f]. The posterior mean
    (not a sample) so that a cached latent is the same on every use."""
    vae = comps.vae
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], target: int) -> list[int]:
    """SDXL micro-conditioning: original size (h, w), crop top-left (y, x), target size (h, w)."""
    return [*original_hw, *crop_top_left, target, target]
