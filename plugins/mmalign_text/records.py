"""Text records -> token ids, exactly as TRL 1.16's DPOTrainer, SFTTrainer and KTOTrainer make them
(``data.tokenization: trl``, the default).

Standard format: ``{"prompt": str, "chosen": str, "rejected": str}`` (SFT: ``"completion"``
instead of chosen / rejected; KTO: ``"completion"`` and ``"label": true|false``). The tokenizer
adds its special tokens (BOS for Llama / Mistral tokenizers) to ``prompt`` and to
``prompt + completion``, the strings joined as they are (no separator is inserted), and the
completion string ends with the EOS token (appended unless it ends with it already).
Conversational format: lists of chat messages; the chat template renders and tokenizes
``prompt`` (with the generation prompt) and ``prompt + completion``; nothing is appended (the
template ends the turn). A record's ``tools`` and ``chat_template_kwargs`` go to the template.
Either way the completion starts where the tokenized prompt and the tokenized conversation
diverge (for pairs: the earlier of the two), and the row prompt + completion is truncated to
``data.max_length`` (:mod:`.lengths`).

``data.tokenization: legacy``: mmalign's older convention: prompt and completion
rendered and tokenized separately without special tokens, an EOS always ending the completion,
the prompt keeping its last ``data.max_prompt_length`` tokens and a completion its first
``data.max_completion_length``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from mmalign.data import Record
from mmalign.errors import DataError, SkipRecord
from mmalign_text.implicit_prompt import split_implicit_prompt
from mmalign_text.lengths import Limits, check_positions, clip, refuse_unbounded, truncate_row


@dataclass
class TextExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: Optional[list[int]]
    where: str
    subset: Optional[str] = None  # the record's "subset" (RewardBench-style per-subset accuracy)
    label: Optional[bool] = None  # KTO records: is the completion desirable?
    # truncation_mode keep_end truncates each row on its own: the rejected row may keep fewer
    # prompt tokens than the chosen one (then they are here; None: the same as prompt_ids)
    rejected_prompt_ids: Optional[list[int]] = None

    @property
    def rejected_prompt(self) -> list[int]:
        return self.prompt_ids if self.rejected_prompt_ids is None else self.rejected_prompt_ids


# --- checks ------------------------------------------------------------------------------------
def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m
                                           for m in value)


def _check_messages(record: Record, key: str, messages: list[dict]) -> None:
    for i, message in enumerate(messages, start=1):
        if message["content"] is None and "tool_calls" not in message:
            raise DataError(f"{record.where}: \"{key}\" message {i} has \"content\": null. Give the "
                            f"message's text as a string (\"\" if it is meant to be empty), or remove "
                            f"the message or the record.")
    if key != "prompt" and not any(str(m["content"] or "").strip() for m in messages):
        raise DataError(f"{record.where}: \"{key}\" has no content. Fix or remove the record.")


def _check_text(record: Record, key: str, value: Any) -> None:
    if value is None and key in record.fields:
        raise DataError(f"{record.where}: \"{key}\" is null; give a string or a list of chat "
                        f"messages ({{\"role\", \"content\"}}), or remove the record.")
    if value is None:
        raise DataError(f"{record.where}: missing key \"{key}\". Text records need \"prompt\", "
                        f"\"chosen\" and \"rejected\" (strings or chat message lists).")
    if isinstance(value, str):
        if key != "prompt" and not value.strip():
            raise DataError(f"{record.where}: \"{key}\" is empty. Every completion needs text; "
                            f"fix or remove the record.")
        return
    if _is_messages(value):
        return _check_messages(record, key, value)
    if isinstance(value, list):  # meant as chat messages: name the first malformed one
        for i, message in enumerate(value, start=1):
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                got = sorted(message) if isinstance(message, dict) else type(message).__name__
                raise DataError(f"{record.where}: \"{key}\" message {i} must be an object with "
                                f"\"role\" and \"content\", got {got}. Fix that message.")
    raise DataError(f"{record.where}: \"{key}\" must be a string or a list of chat messages "
                    f"({{\"role\", \"content\"}}), got {type(value).__name__}.")


def _check_same_format(record: Record, prompt: Any, completion: Any, key: str) -> None:
    if not (isinstance(prompt, str) and isinstance(completion, str)
            or _is_messages(prompt) and _is_messages(completion)):
        raise DataError(f"{record.where}: \"prompt\" and \"{key}\" must both be strings or both be "
                        f"chat message lists.")


# --- chat templates ----------------------------------------------------------------------------
def _template_kwargs(record: Record) -> dict:
    """TRL passes a record's ``tools`` (a list, or JSON text) and ``chat_template_kwargs``."""
    tools = record.fields.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise DataError(f"{record.where}: \"tools\" is a string but not JSON ({e.msg}). Give a "
                            f"list of tool schemas.") from None
    extra = record.fields.get("chat_template_kwargs") or {}
    if not isinstance(extra, dict):
        raise DataError(f"{record.where}: \"chat_template_kwargs\" must be an object, got "
                        f"{type(extra).__name__}.")
    return {"tools": tools, **extra}


def apply_template(tokenizer, record: Record, messages: list, key: str, **kwargs):
    """``tokenizer.apply_chat_template`` with a template error (a role the template refuses, a
    missing variable) reported as a DataError naming the record."""
    if tokenizer.chat_template is None:
        raise DataError(f"{record.where}: conversational record, but the tokenizer has no chat "
                        f"template. Use a chat model's tokenizer or plain-string records.")
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except (TemplateError, ValueError, TypeError, KeyError, IndexError) as e:
        roles = [m.get("role") for m in messages]
        raise DataError(f"{record.where}: the chat template cannot render \"prompt\" + \"{key}\" "
                        f"(roles {roles}): {type(e).__name__}: {e}. Fix the messages (roles and "
                        f"their order as the model's template expects) or remove the record.") from None


def prompt_text(tokenizer, record: Record, prompt: Any) -> str:
    """The prompt alone as text: a string as is, chat messages rendered with the generation prompt
    (the prompt part of :func:`render`; what a sampler continues)."""
    if isinstance(prompt, str):
        return prompt
    return apply_template(tokenizer, record, prompt, "prompt", tokenize=False, add_generation_prompt=True)


def render(tokenizer, record: Record, prompt: Any, completion: Any, key: str) -> tuple[str, str]:
    """(prompt text, completion text), with the chat template for conversational records: the
    prompt with the generation prompt, the completion as the rest of the conversation (legacy
    tokenization, and the VLM plugin)."""
    _check_same_format(record, prompt, completion, key)
    if isinstance(prompt, str):
        return prompt, completion
    prompt_text = apply_template(tokenizer, record, prompt, key, tokenize=False, add_generation_prompt=True)
    full = apply_template(tokenizer, record, prompt + completion, key, tokenize=False)
    if not full.startswith(prompt_text):
        raise DataError(f"{record.where}: the chat template does not render the prompt as a prefix "
                        f"of the conversation, so the completion cannot be isolated.")
    return prompt_text, full[len(prompt_text):]


# --- tokenization ------------------------------------------------------------------------------
def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _clip_value(value: Any, budget: Optional[int], keep: str) -> Any:
    """A string, or each message's string content, cut to the characters worth tokenizing (the
    value itself when nothing is cut)."""
    if isinstance(value, str):
        return clip(value, budget, keep)
    clipped = [{**m, "content": clip(m["content"], budget, keep)} if isinstance(m["content"], str) else m
               for m in value]
    return value if clipped == value else clipped


def _refuse_unbounded(record: Record, values: dict[str, Any], limits: Limits) -> None:
    for key, value in values.items():
        texts = [value] if isinstance(value, str) else [m["content"] for m in value]
        refuse_unbounded(record.where, key, "".join(t for t in texts if isinstance(t, str)), limits)


def trl_ids(tokenizer, record: Record, prompt: Any, completions: dict[str, Any]):
    """TRL 1.16's ``tokenize_fn`` before its prefix split: (prompt ids, {key: ids of the whole
    prompt + completion})."""
    if isinstance(prompt, str):
        eos = tokenizer.eos_token
        prompt_ids = tokenizer(text=prompt)["input_ids"]
        full = {k: tokenizer(text=prompt + (c if c.endswith(eos) else c + eos))["input_ids"]
                for k, c in completions.items()}
        return prompt_ids, full
    kwargs = _template_kwargs(record)
    prompt_ids = apply_template(tokenizer, record, prompt, "prompt", tokenize=True, return_dict=True,
                                add_generation_prompt=True, **kwargs)["input_ids"]
    full = {k: apply_template(tokenizer, record, prompt + c, k, tokenize=True, return_dict=True,
                              **kwargs)["input_ids"] for k, c in completions.items()}
    return prompt_ids, full


def _tokenize_trl(tokenizer, record: Record, prompt: Any, completions: dict[str, Any], limits: Limits):
    """{key: (prompt ids, completion ids)}, each row truncated as TRL 1.16 does. Texts are cut to
    the characters worth tokenizing first (:mod:`.lengths`)."""
    keep = "start" if limits.truncation_mode == "keep_start" else "end"
    if limits.max_length is None:
        _refuse_unbounded(record, {"prompt": prompt, **completions}, limits)
    budget = limits.char_budget(limits.max_length)
    prompt = _clip_value(prompt, budget, keep)
    clipped = {k: _clip_value(v, budget, keep) for k, v in completions.items()}
    prompt_ids, full = trl_ids(tokenizer, record, prompt, clipped)
    boundary = dict(full)
    cut = [k for k in completions if keep == "end" and clipped[k] is not completions[k]]
    if cut:  # a completion cut at its start could merge with the prompt's end: find where the
        # prompt ends from the completion's start instead (its own row keeps only completion tokens)
        heads = {k: _clip_value(completions[k], budget, "start") for k in cut}
        boundary.update(trl_ids(tokenizer, record, prompt, heads)[1])
    # The completion starts where the prompt and prompt + completion diverge (earliest of a pair)
    n = min(common_prefix(prompt_ids, ids) for ids in boundary.values())
    if n < len(prompt_ids):  # TRL warns once and does the same
        record.note(f"the tokenized prompt is not a prefix of prompt + completion: its last "
                    f"{len(prompt_ids) - n} token(s) left out")
    prompt_ids = prompt_ids[:n]
    if limits.max_length is not None and keep == "start" and n >= limits.max_length:
        raise SkipRecord(f"prompt fills data.max_length ({limits.max_length} tokens): no completion "
                         f"token would remain")
    return {k: truncate_row(prompt_ids, ids[n:], limits, record.where, k, record.note)
            for k, ids in full.items()}


def _tokenize_legacy(tokenizer, record: Record, prompt: Any, completions: dict[str, Any], limits: Limits):
    """{key: (prompt ids, completion ids)} with the older convention (module docstring)."""
    p_max, c_max = limits.max_prompt_length, limits.max_completion_length
    if p_max is None or c_max is None:
        _refuse_unbounded(record, {"prompt": prompt, **completions}, limits)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt_text = render(tokenizer, record, prompt, next(iter(completions.values())), next(iter(completions)))[0]
    prompt_ids = ids(clip(prompt_text, limits.char_budget(p_max), "end"))
    if p_max is not None and len(prompt_ids) > p_max:
        _too_long(record, limits, f"prompt longer than data.max_prompt_length ({p_max} tokens)", "its start")
        prompt_ids = prompt_ids[-p_max:]
    rows = {}
    for key, value in completions.items():
        out = ids(clip(render(tokenizer, record, prompt, value, key)[1], limits.char_budget(c_max), "start"))
        if not out or out[-1] != tokenizer.eos_token_id:
            out = out + [tokenizer.eos_token_id]
        if c_max is not None and len(out) > c_max:
            _too_long(record, limits, f"\"{key}\" longer than data.max_completion_length ({c_max} tokens)",
                      "its end")
            out = out[:c_max]
        rows[key] = (prompt_ids, out)
    return rows


def _too_long(record: Record, limits: Limits, what: str, dropped: str) -> None:
    if limits.too_long == "skip":
        raise SkipRecord(what)
    record.note(f"{what}: {dropped} truncated")


def tokenize_record(tokenizer, record: Record, *, paired: bool, limits: Limits = Limits()) -> TextExample:
    """Token ids of a record (module docstring). Rows longer than the model's positions are a
    DataError; records left without a completion token by truncation are skipped (as TRL drops
    them), counted in the data report. A pair without a prompt has it taken from its start
    (:mod:`.implicit_prompt`)."""
    f = split_implicit_prompt(record)
    prompt = f.get("prompt")
    chosen_key = "chosen" if "chosen" in f or paired else "completion"
    keys = [chosen_key, "rejected"] if paired else [chosen_key]
    _check_text(record, "prompt", prompt)
    for key in keys:
        _check_text(record, key, f.get(key))
        _check_same_format(record, prompt, f[key], key)
    if paired and f["chosen"] == f["rejected"]:
        raise SkipRecord("chosen identical to rejected")
    label = f.get("label")
    if label is not None and (paired or not isinstance(label, bool)):
        raise DataError(f"{record.where}: \"label\" is for unpaired KTO records ({{\"prompt\", "
                        f"\"completion\", \"label\": true|false}}) and must be true or false; got {label!r}.")
    tokenize = _tokenize_trl if limits.tokenization == "trl" else _tokenize_legacy
    rows = tokenize(tokenizer, record, prompt, {k: f[k] for k in keys}, limits)
    for key, (p, c) in rows.items():
        check_positions(record.where, key, len(p) + len(c), limits)
    prompt_ids, chosen = rows[chosen_key]
    rejected_prompt, rejected = rows["rejected"] if paired else (prompt_ids, None)
    subset = f.get("subset")
    return TextExample(prompt_ids, chosen, rejected, record.where, str(subset) if subset is not None else None,
                       label, None if rejected_prompt == prompt_ids else rejected_prompt)


def tokenize_prompt(tokenizer, record: Record, limits: Limits = Limits()) -> list[int]:
    """Token ids of a record's ``prompt`` alone, made as :func:`tokenize_record` makes a row's
    prompt part (to sample completions that score as training rows do): trl: the tokenizer's
    special tokens (BOS) or the chat template with the generation prompt (and the record's tools);
    legacy: rendered, no special tokens, its last ``data.max_prompt_length`` tokens."""
    prompt = record.fields.get("prompt")
    _check_text(record, "prompt", prompt)
    if limits.tokenization == "trl":
        return trl_ids(tokenizer, record, prompt, {})[0]
    ids = tokenizer(prompt_text(tokenizer, record, prompt), add_special_tokens=False)["input_ids"]
    return ids if limits.max_prompt_length is None else ids[-limits.max_prompt_length:]
