"""``model.tiny`` for transformers models (the text and VLM plugins): the keyword arguments of the
model's config class, checked by building that config (no model, no download) before anything
loads: first the sizes (positive, heads that divide), then the config class's own validation.
Diffusion checks the sizes of its text encoders' configs with :func:`check_tiny_sizes` too."""

from __future__ import annotations

from typing import Any

from mmalign.config_file import short_repr
from mmalign.errors import ConfigError
from mmalign.validation import fail


def check_transformers_config(tiny: dict, default_type: str, key: str = "model.tiny") -> None:
    """Build the transformers config of ``model.tiny`` (no model, no download), so that its own
    validation speaks now, with the key named."""
    from transformers import AutoConfig

    check_tiny_sizes(tiny, key)
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


# transformers config keys that are sizes or counts, wherever they appear in model.tiny (also in a
# nested text_config / vision_config)
SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "vocab_size", "head_dim", "image_size",
             "patch_size", "num_channels")


def check_tiny_sizes(tiny: dict, key: str = "model.tiny") -> None:
    """Sizes in model.tiny: positive integers, and hidden_size divisible by num_attention_heads,
    num_attention_heads by num_key_value_heads (what attention reshapes need)."""
    for name, value in tiny.items():
        if isinstance(value, dict):
            check_tiny_sizes(value, f"{key}.{name}")
        elif name in SIZE_KEYS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise fail(None, f"{key}.{name}", f"must be a positive integer, got {short_repr(value)}.")
    hidden, heads, kv = (tiny.get(k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    if hidden and heads and "head_dim" not in tiny and hidden % heads:
        raise fail(None, f"{key}.num_attention_heads", f"({heads}) must divide {key}.hidden_size "
                                                        f"({hidden}): each head gets hidden_size / "
                                                        f"num_attention_heads dimensions.")
    if heads and kv and heads % kv:
        raise fail(None, f"{key}.num_key_value_heads", f"({kv}) must divide {key}.num_attention_heads "
                                                        f"({heads}) (grouped-query attention).")
