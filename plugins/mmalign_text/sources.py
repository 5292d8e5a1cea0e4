"""Where a transformers model's tokenizer (or processor) and config come from: ``model.tokenizer``
or ``model.name_or_path`` (a path or Hub id), or objects passed to :func:`mmalign.train` from Python
(``tokenizer_or_processor=``, ``model=``; :mod:`mmalign.in_memory`)."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from mmalign.config import ModelConfig
from mmalign.errors import ConfigError
from mmalign.in_memory import held, source_name


def check_special_tokens(tokenizer, path: str):
    """Padding is the EOS token when the tokenizer has none; a tokenizer without EOS is refused
    (completions end with it)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model.tokenizer: the tokenizer at '{path}' has no EOS token; set one.")
    return tokenizer


def processing_source(cfg: ModelConfig) -> tuple[Any, Optional[str]]:
    """Where the tokenizer (or processor) comes from: ``(object, None)`` for one passed to
    mmalign.train, else ``(None, path)``: ``model.tokenizer``, default ``model.name_or_path``; for a
    model passed without one, the path the model was loaded from (as TRL's trainers do)."""
    path = cfg.tokenizer or cfg.name_or_path
    obj = held(path)
    if obj is None:
        if path is None:
            raise ConfigError("model.tokenizer is required for a model built from model.tiny: a "
                              "directory written by tokenizer.save_pretrained (or a hub id).")
        return None, path
    if not isinstance(obj, nn.Module):
        return obj, None
    source = source_name(path)
    if source is None:
        raise ConfigError("mmalign.train: the model passed has no name_or_path to load its tokenizer from; "
                          "pass tokenizer_or_processor=.")
    return None, source


def pretrained_config(cfg: ModelConfig):
    """The transformers config of ``model.name_or_path`` (a model passed from Python: its own),
    read without weights."""
    from transformers import AutoConfig

    obj = held(cfg.name_or_path)
    if obj is not None:
        return obj.config
    return AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)


def load_tokenizer(cfg: ModelConfig):
    """``AutoTokenizer`` from ``model.tokenizer`` (default ``model.name_or_path``), or the tokenizer
    passed to mmalign.train (a processor's own tokenizer)."""
    from transformers import AutoTokenizer

    obj, path = processing_source(cfg)
    if obj is not None:
        return check_special_tokens(getattr(obj, "tokenizer", obj), "tokenizer_or_processor")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.tokenizer: cannot load a tokenizer from '{path}' ({e}). Pass a "
                          f"directory with tokenizer files, or a hub id available offline.") from None
    return check_special_tokens(tok, path)
