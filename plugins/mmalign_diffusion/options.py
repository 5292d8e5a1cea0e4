"""The diffusion plugin's ``model.options`` and ``model.dtype``, and an online run's sampling options
(``algorithm.options.sampling``), checked before anything loads."""

from __future__ import annotations

import dataclasses

import torch

from mmalign.config import ModelConfig
from mmalign.errors import ConfigError
from mmalign.precision import DTYPES

OPTIONS = {"resolution": None, "random_crop": False, "random_flip": False, "cache_dir": None,
           "eval_draws": 4, "noise": "per_step", "noise_seed": 0}
NOISE_MODES = ("per_step", "per_example")
# diffusers components are loaded, then cast: there is no checkpoint dtype to keep, so no "auto"
SUPPORTED_DTYPES = tuple(name for name, dtype in DTYPES.items() if isinstance(dtype, torch.dtype))


def check_options(model_cfg: ModelConfig) -> dict:
    """``model.options`` with the defaults filled in; ConfigError naming the key when one is wrong
    (in ``model.options``, ``model.dtype``, or the sizes of every nested config in ``model.tiny``)."""
    from mmalign_text.tiny_config import check_tiny_sizes

    if model_cfg.tiny is not None:
        check_tiny_sizes(model_cfg.tiny)
    unknown = set(model_cfg.options) - set(OPTIONS)
    if unknown:
        raise ConfigError(f"model.options: unknown option '{sorted(unknown)[0]}' for the diffusion "
                          f"plugin. Known: {', '.join(sorted(OPTIONS))}.")
    if model_cfg.dtype not in SUPPORTED_DTYPES:
        raise ConfigError(f"model.dtype: '{model_cfg.dtype}' is not supported by the diffusion "
                          f"plugin; use one of {', '.join(SUPPORTED_DTYPES)}.")
    options = {**OPTIONS, **model_cfg.options}
    if options["noise"] not in NOISE_MODES:
        raise ConfigError(f"model.options.noise: '{options['noise']}' is not a noise mode; use "
                          f"per_step (a fresh draw every step, as the diffusers scripts) or "
                          f"per_example (one fixed draw per pair, which lets reference.cache work).")
    for name, low in (("eval_draws", 1), ("resolution", 8), ("noise_seed", 0)):
        value = options[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"model.options.{name} must be an integer >= {low}, got {value!r}.")
    return options


# algorithm.options.sampling of an online run: the sampler's options (mmalign_diffusion.online)
SAMPLING = {"num_inference_steps": 20, "eta": 1.0, "guidance_scale": 1.0, "timestep_fraction": 1.0, "score": "auto"}
SCORES = ("auto", "trajectory", "denoising")
TOKEN_OPTIONS = ("max_new_tokens", "temperature", "top_p")


def sampling_options(options) -> dict:
    """An online algorithm's options -> the keywords of the plugin's ``sample``; ConfigError naming
    the key when one does not apply. ``score`` auto: "trajectory" (per-step log-probs, DDPO) for an
    algorithm whose loss takes per-unit ratios, "denoising" (the Diffusion-DPO score: online
    Diffusion-DPO) for a pair loss against the reference (``online_dpo``)."""
    key = "algorithm.options"
    known = ", ".join(SAMPLING)
    missing = [need for need in getattr(type(options), "needs", ()) if need in ("greedy", "value_model")]
    if missing:  # ReMax's greedy response, PPO's critic: nothing of the kind for a denoising chain
        raise ConfigError(f"algorithm.name: this algorithm needs a {missing[0].replace('_', ' ')}, which the "
                          f"diffusion plugin does not provide. Use ddpo, grpo (or another group "
                          f"algorithm) or online_dpo.")
    defaults = {f.name: f.default for f in dataclasses.fields(options)}
    for name in TOKEN_OPTIONS:
        if hasattr(options, name) and getattr(options, name) != defaults.get(name):
            raise ConfigError(f"{key}.{name}: the diffusion plugin samples images by DDIM and has no {name}; "
                              f"set its own options under {key}.sampling ({known}).")
    sampling = options.sampling
    unknown = sorted(set(sampling) - set(SAMPLING))
    if unknown:
        raise ConfigError(f"{key}.sampling.{unknown[0]}: not a sampling option of the diffusion plugin. Known: {known}.")
    values = {**SAMPLING, **sampling}
    per_unit = getattr(type(options), "ratio_needs_old_scores", True)  # the loss takes per-step ratios
    score = values["score"] if values["score"] != "auto" else ("trajectory" if per_unit else "denoising")
    problem = _sampling_problem(values, score, per_unit)
    if problem:
        raise ConfigError(f"{key}.sampling.{problem[0]}: {problem[1]}")
    return {"steps": values["num_inference_steps"], "eta": float(values["eta"]),
            "guidance_scale": float(values["guidance_scale"]), "timestep_fraction": float(values["timestep_fraction"]),
            "score": score}


def _sampling_problem(values: dict, score: str, per_unit: bool):
    """(key, message) for the first bad sampling value, else None."""
    def number(name):
        value = values[name]
        return None if isinstance(value, bool) or not isinstance(value, (int, float)) else value

    steps = values["num_inference_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        return "num_inference_steps", f"must be an integer >= 1, got {steps!r}."
    if number("guidance_scale") is None or values["guidance_scale"] < 1:
        return "guidance_scale", f"must be a number >= 1 (1: no classifier-free guidance), got {values['guidance_scale']!r}."
    if number("timestep_fraction") is None or not 0 < values["timestep_fraction"] <= 1:
        return "timestep_fraction", f"must be in (0, 1] (the share of denoising steps that train), got {values['timestep_fraction']!r}."
    if values["score"] not in SCORES:
        return "score", f"is {values['score']!r}; use one of {', '.join(SCORES)}."
    if score == "denoising" and per_unit:
        return "score", ("is 'denoising' (one Diffusion-DPO score per image), but this algorithm's loss takes "
                         "per-step log-prob ratios: use 'trajectory' (or auto).")
    if number("eta") is None or values["eta"] < 0 or (score == "trajectory" and values["eta"] == 0):
        return "eta", (f"must be a number > 0 for score 'trajectory' (DDIM steps with a log-probability; 1: "
                       f"DDPM-like) and >= 0 otherwise, got {values['eta']!r}.")
    return None
