"""Preference records whose prompt is implicit (TRL's "implicit prompt" preference type, as in
ultrafeedback_binarized or Anthropic HH): ``chosen`` and ``rejected`` are whole conversations (or
whole texts) that begin with the same prompt. As TRL 1.16 does (``extract_prompt``, applied by
its ``DPOTrainer`` and ``KTOTrainer``), the prompt is their longest common prefix, message by
message (or character by character), and chosen / rejected are what follows it."""

from __future__ import annotations

from typing import Any

from mmalign.data import Record
from mmalign.errors import DataError

EXTRACTED = "prompt extracted from chosen and rejected (implicit prompt)"


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def has_implicit_prompt(fields: dict) -> bool:
    """A pair without a prompt, or (TRL's ``maybe_extract_prompt``) conversations whose ``prompt``
    is a plain string: datasets such as ultrafeedback_binarized carry the user's question as text
    beside the full conversations, and the conversations are what gets trained on. (Conversations
    that do not start alike beside a string prompt are left to the usual format error.)"""
    if "chosen" not in fields or "rejected" not in fields:
        return False
    if "prompt" not in fields:
        return True
    chosen, rejected = fields["chosen"], fields["rejected"]
    return isinstance(fields["prompt"], str) and _is_conversation(chosen) and _is_conversation(rejected) \
        and chosen[0] == rejected[0]


def _prompt_length(chosen: Any, rejected: Any) -> int:
    """Where chosen and rejected part. As in TRL: a text prompt ends before the space that precedes
    the first difference (the completion keeps its leading space: " blue."), and when one is the
    start of the other the last shared element goes to the completions, so that neither is empty.
    (TRL's loop misreads a difference at the very first element when the text ends with a space;
    here that prompt is simply empty.)"""
    shortest = min(len(chosen), len(rejected))
    for index in range(shortest):
        if chosen[index] != rejected[index]:
            return index - 1 if index > 0 and chosen[index - 1] == " " else index
    return max(shortest - 1, 0)


def split_implicit_prompt(record: Record) -> dict:
    """The record's fields with ``prompt``, ``chosen`` and ``rejected`` split as the module says
    (the record's own fields when its prompt is explicit). The record is noted (data report)."""
    fields = record.fields
    if not has_implicit_prompt(fields):
        return fields
    chosen, rejected = fields["chosen"], fields["rejected"]
    both_text = isinstance(chosen, str) and isinstance(rejected, str)
    if not (both_text or _is_conversation(chosen) and _is_conversation(rejected)):
        raise DataError(f"{record.where}: no \"prompt\", so the prompt is taken from the start that "
                        f"\"chosen\" and \"rejected\" share; that needs both to be strings or both "
                        f"lists of chat messages ({{\"role\", \"content\"}}), got "
                        f"{type(chosen).__name__} and {type(rejected).__name__}. Add a \"prompt\" or "
                        f"fix the record.")
    n = _prompt_length(chosen, rejected)
    if not both_text and n <= 0:
        raise DataError(f"{record.where}: no \"prompt\", and \"chosen\" and \"rejected\" differ from "
                        f"their first message, so no prompt can be taken from them. Start both with "
                        f"the same prompt messages, or add a \"prompt\".")
    record.note(EXTRACTED)
    return {**fields, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}
