"""The diffusion plugin's ``model.options`` and ``model.dtype``, checked before anything loads."""

from __future__ import annotations

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
    """``model.options`` with the defaults filled in; ConfigError naming the key when one is wrong."""
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
