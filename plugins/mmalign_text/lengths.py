"""Length limits of the text plugin: TRL 1.16's truncation of a (prompt, completion) row, the
model's position limit, and a bound on the characters worth tokenizing.

TRL 1.16 (``DataCollatorForPreference``, ``SFTTrainer``) truncates the whole row
``prompt_ids + completion_ids`` to ``max_length`` tokens:

    keep_start: row[:max_length]     (the completion loses its end)
    keep_end:   row[-max_length:]    (the prompt loses its start, then the completion)

Characters worth tokenizing. Every token covers at most ``L`` characters, ``L`` the longest entry
of the vocabulary (byte-level tokens are written one character per byte, so this also holds for
them). The ``n`` tokens kept at one end of a text therefore come from its ``n * L`` characters at
that end; the plugin tokenizes ``2 * n * L`` of them (the factor 2 leaves room for a normalizer
that merges characters and for the word cut at the boundary), so a 100 MB line costs no more than
a short one and the kept tokens are those of the whole text. The one exception: a single run of
more than ``n * L`` characters with no pre-tokenizer break (no space or punctuation), whose
sub-word merges may differ near the cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mmalign.errors import DataError, SkipRecord

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class Limits:
    """What bounds a record's tokens (from ``data.*``) plus the model's position limit."""
    tokenization: str = "trl"  # "trl" (TRL 1.16) or "legacy" (separate prompt / completion limits)
    max_length: Optional[int] = 1024  # trl: prompt + completion tokens per row; None: no limit
    truncation_mode: str = "keep_start"  # trl: "keep_start" or "keep_end"
    max_prompt_length: Optional[int] = None  # legacy: the prompt keeps its last tokens
    max_completion_length: Optional[int] = None  # legacy: a completion keeps its first tokens
    too_long: str = "truncate"  # rows over the limit: "truncate" (noted) or "skip"
    max_positions: Optional[int] = None  # the model's position limit; None: unknown
    chars_per_token: int = 64  # L: the longest vocabulary entry, in characters

    @classmethod
    def of(cls, data, tokenizer, max_positions: Optional[int]) -> "Limits":
        """From a DataConfig (its ``options``: the plugin's data.* keys), the tokenizer (for L)
        and the model's position limit."""
        from mmalign_text.data_options import text_options

        o = text_options(data)
        return cls(o.tokenization, o.max_length, o.truncation_mode, o.max_prompt_length,
                   o.max_completion_length, o.too_long, max_positions, longest_token(tokenizer))

    def char_budget(self, tokens: Optional[int]) -> Optional[int]:
        """Characters to tokenize for ``tokens`` kept tokens (module docstring); None: all."""
        return None if tokens is None else 2 * tokens * self.chars_per_token


def longest_token(tokenizer) -> int:
    """L: the length in characters of the longest vocabulary entry (added tokens included)."""
    return max(map(len, tokenizer.get_vocab()), default=1)


def model_positions(model_cfg) -> Optional[int]:
    """The model's position limit (``max_position_embeddings`` or its older names) from its
    config, without loading weights; None when the config cannot be read or names none."""
    from transformers import AutoConfig

    try:
        if model_cfg.name_or_path is not None:
            config = AutoConfig.from_pretrained(model_cfg.name_or_path,
                                                trust_remote_code=model_cfg.trust_remote_code)
        elif model_cfg.tiny is not None:
            tiny = dict(model_cfg.tiny)
            config = AutoConfig.for_model(tiny.pop("model_type", "llama"), **tiny)
        else:
            return None
    except (OSError, ValueError, TypeError, KeyError):
        return None  # loading the model reports the problem with its own message
    config = config.get_text_config()
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def clip(text: str, budget: Optional[int], keep: str) -> str:
    """The ``budget`` characters of ``text`` at the end that truncation keeps ("start" / "end")."""
    if budget is None or len(text) <= budget:
        return text
    return text[:budget] if keep == "start" else text[-budget:]


def refuse_unbounded(where: str, key: str, text: str, limits: Limits) -> None:
    """With no token limit, refuse before tokenizing a text that must exceed the model's positions
    (more than 2 * positions * L characters), instead of tokenizing it whole."""
    budget = limits.char_budget(limits.max_positions)
    if budget is not None and len(text) > budget:
        raise DataError(f"{where}: \"{key}\" has {len(text):,} characters, more than the model's "
                        f"{limits.max_positions} positions can hold. Set data.max_length (e.g. "
                        f"{limits.max_positions}) so long records are truncated, or shorten the record.")


def truncate_row(prompt: list[int], completion: list[int], limits: Limits, where: str, key: str,
                 note) -> tuple[list[int], list[int]]:
    """TRL 1.16's truncation of the row ``prompt + completion`` to ``limits.max_length`` tokens
    (module docstring). A row over the limit is noted (``note``), or skipped with too_long: skip."""
    n = limits.max_length
    if n is None or len(prompt) + len(completion) <= n:
        return prompt, completion
    what = f"prompt + \"{key}\" longer than data.max_length ({n} tokens)"
    if limits.too_long == "skip":
        raise SkipRecord(what)
    if limits.truncation_mode == "keep_start":
        note(f"{what}: its end truncated")
        return prompt, completion[:n - len(prompt)]
    note(f"{what}: its start truncated")
    if len(completion) >= n:
        return [], completion[-n:]
    return prompt[len(prompt) + len(completion) - n:], completion


def check_positions(where: str, key: str, length: int, limits: Limits) -> None:
    """A row longer than the model's positions fails at the first step (learned position tables
    index out of range; rotary models leave the range they were trained on): refuse it now."""
    if limits.max_positions is not None and length > limits.max_positions:
        fix = (f"lower data.max_length to at most {limits.max_positions}"
               if limits.tokenization == "trl" else
               "lower data.max_prompt_length + data.max_completion_length to fit")
        raise DataError(f"{where}: prompt + \"{key}\" is {length} tokens, more than the model's "
                        f"{limits.max_positions} positions (max_position_embeddings). {fix.capitalize()}, "
                        f"or shorten the record.")
