"""A Stable Diffusion (XL) pipeline passed to :func:`mmalign.train` as ``model=``
(:mod:`mmalign.in_memory`): its components, used as they are (its dtype and device), and what
cannot work with it."""

from __future__ import annotations

from typing import Optional

from mmalign.config import ModelConfig
from mmalign.errors import ConfigError
from mmalign.in_memory import held, source_name
from mmalign_diffusion.components import Components, _freeze


def held_pipeline(path: str):
    """The Stable Diffusion (XL) pipeline passed to mmalign.train as ``model=``."""
    pipe = held(path)
    if not all(hasattr(pipe, name) for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")):
        raise ConfigError(f"mmalign.train: model= is a {type(pipe).__name__}; the diffusion plugin takes a "
                          f"Stable Diffusion (XL) pipeline (StableDiffusionPipeline.from_pretrained(...)).")
    return pipe


def components_of(pipe, resolution: Optional[int]) -> Components:
    """The frozen components of a pipeline object, as :func:`load_components` reads them from a
    directory: the pipeline's scheduler kept for sampling and saving, a DDPMScheduler of the same
    betas and prediction type for training."""
    from diffusers import DDPMScheduler

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    tokenizers = [pipe.tokenizer, *([pipe.tokenizer_2] if sdxl else [])]
    encoders = [pipe.text_encoder, *([pipe.text_encoder_2] if sdxl else [])]
    comps = Components("sdxl" if sdxl else "sd15", tokenizers, encoders, pipe.vae,
                       DDPMScheduler.from_config(pipe.scheduler.config), 0, pipeline_scheduler=pipe.scheduler)
    comps.resolution = resolution or pipe.unet.config.sample_size * comps.vae_scale_factor
    return _freeze(comps)


def check_passed(model_cfg: ModelConfig) -> bool:
    """Whether ``model.name_or_path`` is a pipeline passed from Python. A LoRA is saved alone,
    pointing at the base's path, so a LoRA on one with no path is refused, and so is one whose
    components' weights are not those at its path (:func:`foreign_component`)."""
    pipe = held(model_cfg.name_or_path)
    if pipe is None:
        return False
    source = source_name(model_cfg.name_or_path)
    if model_cfg.lora is not None and source is None:
        raise ConfigError("mmalign.train: model= is a pipeline without a name_or_path, and model.lora "
                          "saves only the adapter: save the pipeline first (pipeline.save_pretrained(DIR)) "
                          "and pass DiffusionPipeline.from_pretrained(DIR), or set model.name_or_path: DIR.")
    foreign = foreign_component(pipe, source) if model_cfg.lora is not None else None
    if foreign:
        raise ConfigError(f"mmalign.train: model= is a pipeline that names '{source}', but its {foreign}, and "
                          f"model.lora saves only the adapter, which would load over that path's weights. Save "
                          f"the pipeline (pipeline.save_pretrained(DIR)) and pass "
                          f"DiffusionPipeline.from_pretrained(DIR), or train without model.lora.")
    return True


COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")  # the weights an adapter's base loads


def foreign_component(pipe, source: str) -> Optional[str]:
    """Why the pipeline's weights are not those at ``source`` (a component replaced in memory,
    say), or None: each component's sampled weight matrices against its folder's safetensors
    (:mod:`mmalign_text.weights_source`; ``.bin`` weights or nothing comparable are trusted)."""
    from mmalign_text.weights_source import not_its_weights_because

    for name in COMPONENTS:
        part = getattr(pipe, name, None)
        because = not_its_weights_because(part, source, name) if part is not None else None
        if because:
            return {"differ": f"{name}'s weights differ from the files there",
                    "absent": f"{name} has no weights there on this machine"}[because]
    return None
