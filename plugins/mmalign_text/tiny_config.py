"""``model.tiny`` for transformers models (the text and VLM plugins): the keyword arguments of the
model's config class, checked by building that config (no model, no download) before anything
loads. The core checks only that sizes are positive and divide (mmalign/validation.py)."""

from __future__ import annotations

from typing import Any

from mmalign.errors import ConfigError


def check_transformers_config(tiny: dict, default_type: str, key: str = "model.tiny") -> None:
    """Build the transformers config of ``model.tiny`` (no model, no download), so that its own
    validation speaks now, with the key named."""
    from transformers import AutoConfig

    kwargs = dict(tiny)
    model_type = kwargs.pop("model_type", default_type)
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except Exception as e:  # noqa: BLE001 (ValueError, TypeError, huggingface_hub's StrictDataclassError)
        reason = " ".join(str(e).split()).rstrip(".")
        raise ConfigError(f"key '{key}' is not a valid '{model_type}' config: {reason[:300]}. model.tiny "
                          f"holds the keyword arguments of the model's config class (e.g. LlamaConfig).") from None
    params = _estimated_parameters(config)
    if params > MAX_TINY_PARAMETERS:
        raise ConfigError(f"key '{key}' describes a model of about {params / 1e9:.1f}B parameters (the "
                          f"config class's defaults fill in what model.tiny leaves out). model.tiny builds "
                          f"small models from scratch: set hidden_size, num_hidden_layers, ... (see "
                          f"configs/demo/text.yaml), or load a checkpoint with model.name_or_path.")


MAX_TINY_PARAMETERS = 2e9  # more than this, built from random weights on purpose, is a missed key


def _estimated_parameters(config: Any) -> float:
    """Transformer blocks (attention 4 h^2, MLP 3 h i) plus embeddings: enough to tell a tiny
    model from the class's multi-billion-parameter defaults."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = getattr(text, "hidden_size", 0) or 0
    i = getattr(text, "intermediate_size", 0) or 4 * h
    layers = getattr(text, "num_hidden_layers", 0) or 0
    vocab = getattr(text, "vocab_size", 0) or 0
    return float(layers * (4 * h * h + 3 * h * i) + vocab * h)
