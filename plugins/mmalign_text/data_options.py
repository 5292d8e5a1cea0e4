"""The text plugin's own ``data.*`` keys: how text records become token ids and how long rows get.

Users write them flat under ``data:`` as with TRL (``data: {max_length: 512, truncation_mode:
keep_end}``). The core config knows none of them: ``load_config`` builds the core ``data`` keys,
then checks the remaining ones against the ``data_options`` dataclass that the reward factory named
by ``model.reward`` declares (``TextReward.data_options = TextDataOptions``), with the same typed
checks as every other key, and stores the instance as ``cfg.data.options``. Then it calls
:meth:`TextDataOptions.problem` (ranges and the rules across these keys), before anything loads.
The VLM plugin extends these keys' rules (:mod:`mmalign_vlm.data_options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

INT64_MAX = 2 ** 63 - 1


@dataclass
class TextDataOptions:
    # "trl" tokenizes exactly as TRL 1.16 (the tokenizer's special tokens such as BOS, EOS after
    # plain-string completions only, one max_length); "legacy": mmalign's older convention (no
    # special tokens, EOS always appended, separate prompt / completion limits)
    tokenization: Literal["trl", "legacy"] = "trl"
    max_length: Optional[int] = 1024  # tokens of prompt + completion per row (TRL's); null: no limit
    # which end of a row over max_length is kept (TRL's keep_start / keep_end)
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start"
    max_prompt_length: Optional[int] = None  # legacy only: prompts keep their last tokens
    max_completion_length: Optional[int] = None  # legacy only: completions keep their first tokens
    # rows over the length limit: truncate (TRL's; counted in the data report) or skip (counted)
    too_long: Literal["truncate", "skip"] = "truncate"

    def problem(self) -> Optional[tuple[str, str]]:
        """(dotted key, what is wrong) for the first bad value or contradiction; else None. The
        core turns it into a ConfigError naming the config file and the fix (--set KEY=VALUE)."""
        for key in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, key)
            if value is not None and not 1 <= value <= INT64_MAX:
                return f"data.{key}", f"must be at least 1, got {value}."
        legacy_keys = [k for k in ("max_prompt_length", "max_completion_length") if getattr(self, k) is not None]
        if self.tokenization == "trl" and legacy_keys:
            return (f"data.{legacy_keys[0]}",
                    "only applies with data.tokenization: legacy (separate prompt and completion limits, "
                    "no special tokens, EOS always appended). The default data.tokenization: trl tokenizes "
                    "as TRL 1.16, with one limit on prompt + completion: set data.max_length (default "
                    "1024) and data.truncation_mode (keep_start | keep_end) instead, or set "
                    "data.tokenization: legacy to keep the older behaviour.")
        return None


def text_options(data_cfg: Any) -> TextDataOptions:
    """The text keys of a core DataConfig. A DataConfig built in code (``DataConfig()``, not by
    load_config) holds no plugin options: it gets the defaults, as its YAML equivalent would."""
    options = getattr(data_cfg, "options", None)
    return options if isinstance(options, TextDataOptions) else TextDataOptions()
