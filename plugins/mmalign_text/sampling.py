"""Sampling completions from a causal LM, with the randomness fixed by a seed so that two models
sampled with the same seed share their sampling noise; and the text plugin's ``sample``: n
completions per context as groups that its ``collate`` / ``score`` turn into Scores [C, n]."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mmalign.data import Record
from mmalign.errors import DataError
from mmalign.protocol import Samples
from mmalign_text.causal_lm import unwrap_wrappers
from mmalign_text.lengths import Limits
from mmalign_text.records import TextExample, tokenize_prompt


@dataclass
class TextGroup:
    """One context's sampled responses: its prompt ids and k completions (generated ids, up to and
    including EOS), scored as k plain rows by the text plugin."""
    prompt_ids: list[int]
    completions: list[list[int]]
    where: str


def group_rows(groups: list[TextGroup]) -> list[tuple[list[int], list[int]]]:
    """(prompt, completion) rows, context-major: row c * k + j is response j of context c."""
    return [(g.prompt_ids, c) for g in groups for c in g.completions]


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, seed: int,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 256,
                 greedy: bool = False) -> list[list[int]]:
    """Generated ids per prompt (left-padded batches of ``batch_size``), cut after the first EOS.
    Ancestral sampling at ``temperature`` (top_p 1: no truncation, so the samples follow the
    model's distribution exactly); torch's global seed is ``seed + start`` for the chunk at ``start``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, out = tokenizer.eos_token_id, []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p, dtype=torch.long), 1
            torch.manual_seed(seed + start)
            kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature,
                                                               top_k=0, top_p=top_p)
            generated = unwrap_wrappers(model).generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **kwargs)
            for new in generated[:, width:].tolist():
                out.append(new[:new.index(eos) + 1] if eos in new else new)
    finally:
        model.train(was_training)
    return out


def sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 1.0,
           seed: int = 0, batch_size: int = 256, greedy: bool = False) -> list[TextExample]:
    """Completions of prompt strings (tokenized without special tokens) as examples whose
    ``chosen_ids`` are the generated ids up to and including EOS, ready for the text plugin's
    ``collate`` / ``score`` (the demo and Best-of-N)."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    new = generate_ids(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, seed=seed,
                       temperature=temperature, batch_size=batch_size, greedy=greedy)
    return [TextExample(p, ids, None, f"sample {i}") for i, (p, ids) in enumerate(zip(prompt_ids, new))]


def completion_text(tokenizer, example: TextExample) -> str:
    return tokenizer.decode(example.chosen_ids, skip_special_tokens=True)


def context_record(context: Any, index: int) -> Record:
    """A context as a Record: a Record as is; a mapping ({"prompt": ...}, as records give it) as
    one named "context <index>" whose relative paths resolve against the working directory."""
    if isinstance(context, Record):
        return context
    if not isinstance(context, Mapping):
        raise DataError(f"context {index}: a context is a mapping with \"prompt\" (as a record gives it), "
                        f"got {type(context).__name__}.")
    return Record(dict(context), f"context {index}", Path.cwd(), allow_outside=True)


def draw_seed(generator: torch.Generator) -> int:
    """A seed drawn from ``generator``: the same generator state gives the same samples."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


def rng_fork(model):
    """torch's global RNG (and the model's CUDA device's) restored after sampling seeds it."""
    device = next(model.parameters()).device
    cuda = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def sample_contexts(model, tokenizer, limits: Limits, contexts: list[Any], n: int, generator: torch.Generator,
                    *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                    batch_size: int = 256) -> Samples:
    """``n`` sampled completions per context, its prompt tokenized as the text plugin tokenizes
    training prompts (:func:`mmalign_text.records.tokenize_prompt`: BOS, chat template).
    ``temperature=0`` decodes greedily (``do_sample=False``; top_p is then unused).
    ``responses``: decoded texts [C][n]; ``trajectory``: {"prompt_ids": [C], "completion_ids": [C][n],
    "finished": [C][n] (the completion ends with EOS)};
    ``examples``: one :class:`TextGroup` per context."""
    records = [context_record(c, i) for i, c in enumerate(contexts)]
    prompts = [tokenize_prompt(tokenizer, r, limits) for r in records]
    for r, p in zip(records, prompts):
        if not p:
            raise DataError(f"{r.where}: the prompt tokenizes to no tokens; sampling needs at least one "
                            f"(give a non-empty prompt, or a tokenizer that adds BOS).")
    seed = draw_seed(generator)
    with rng_fork(model):
        new = generate_ids(model, tokenizer, [p for p in prompts for _ in range(n)], max_new_tokens=max_new_tokens,
                           seed=seed, temperature=temperature, top_p=top_p, batch_size=batch_size,
                           greedy=temperature == 0)
    completions = [new[i * n:(i + 1) * n] for i in range(len(prompts))]
    responses = [[tokenizer.decode(c, skip_special_tokens=True) for c in cs] for cs in completions]
    groups = [TextGroup(p, cs, r.where) for p, cs, r in zip(prompts, completions, records)]
    finished = [[bool(c) and c[-1] == tokenizer.eos_token_id for c in cs] for cs in completions]
    return Samples(list(contexts), responses, groups,
                   {"prompt_ids": prompts, "completion_ids": completions, "finished": finished})
