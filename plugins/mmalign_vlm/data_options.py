"""The VLM plugin's ``data.*`` keys: the text plugin's (:mod:`mmalign_text.data_options`), plus
one rule of its own: no ``truncation_mode: keep_end`` (as in TRL), which could cut image tokens
out of the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mmalign_text.data_options import TextDataOptions


@dataclass
class VLMDataOptions(TextDataOptions):
    def problem(self) -> Optional[tuple[str, str]]:
        """The text keys' problems, then keep_end (refused for VLMs, as TRL does)."""
        found = super().problem()
        if found is None and self.tokenization == "trl" and self.truncation_mode == "keep_end":
            return ("data.truncation_mode", "is keep_end, which vision-language models do not support (as "
                    "in TRL): it could cut image tokens out of the prompt. Use keep_start, or "
                    "data.max_length: null.")
        return found
