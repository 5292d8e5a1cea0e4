"""QLoRA (``model.options.quantization: 4bit | 8bit``, Dettmers et al. 2023): the frozen base is
loaded by bitsandbytes, an optional extra (``pip install 'mmalign[bitsandbytes]'``), and only the
LoRA adapters train."""

from __future__ import annotations

import torch

from mmalign.config import ModelConfig
from mmalign.errors import ConfigError
from mmalign.in_memory import held
from mmalign.precision import DTYPES


QUANTIZATION = ("4bit", "8bit")


def quantization(cfg: ModelConfig) -> dict:
    """``model.options.quantization`` (QLoRA, Dettmers et al. 2023): the base model loaded by
    bitsandbytes in 4-bit NF4 with double quantization (computing in model.dtype when that is
    bfloat16 or float16, else float32) or in 8-bit, frozen; only the LoRA adapters train, in float32."""
    kind = cfg.options.get("quantization")
    if kind is None:
        return {}
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    compute = DTYPES[cfg.dtype] if cfg.dtype in ("bfloat16", "float16") else torch.float32
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)}


def check_quantization(cfg: ModelConfig) -> None:
    """``model.options.quantization``: 4bit or 8bit, with LoRA, on a saved model, bitsandbytes installed."""
    import importlib.util

    kind = cfg.options.get("quantization")
    if kind is None:
        return
    if kind not in QUANTIZATION:
        raise ConfigError(f"model.options.quantization must be 4bit or 8bit (QLoRA), got {kind!r}.")
    if cfg.lora is None:
        raise ConfigError("model.options.quantization: a quantized base is frozen, so only LoRA adapters can "
                          "train (QLoRA). Set model.lora, or remove the option.")
    if cfg.name_or_path is None or held(cfg.name_or_path) is not None:
        raise ConfigError("model.options.quantization: bitsandbytes quantizes a model as it loads it; set "
                          "model.name_or_path (a model built from model.tiny can be saved with save_pretrained "
                          "first), or pass mmalign.train a model loaded with a BitsAndBytesConfig.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.options.quantization needs bitsandbytes: pip install 'mmalign[bitsandbytes]'.")
