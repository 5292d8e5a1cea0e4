"""Sampling completions from a causal LM, with the randomness fixed by a seed so that two models
sampled with the same seed share their sampling noise; and the text plugin's ``sample``: n
completions per context as groups that its ``collate`` / ``score`` turn into Scores [C, n].
Decoding is the lean loop of :mod:`.decoding` (each prompt prefilled once for its n samples) or,
with ``model.options.generation: hf``, HF ``generate``: the same distribution and, for the same
seed, the same samples up to float rounding."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from mmalign.data import Record
from mmalign.errors import DataError
from mmalign.protocol import Samples
from mmalign_text.causal_lm import unwrap, unwrap_wrappers
from mmalign_text.decoding import decode, fast_path_problem
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


GENERATION = ("fast", "hf")  # model.options.generation: the lean loop (default) or HF generate
log = logging.getLogger("mmalign")
_logged: set[str] = set()


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, seed: int,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 256,
                 greedy: bool = False, repeats: int = 1, generation: str = "fast",
                 entropy_sums: Optional[list[float]] = None) -> list[list[int]]:
    """Generated ids, ``repeats`` per prompt (prompt-major), each cut after its first EOS.
    Ancestral sampling at ``temperature`` (top_p 1: no truncation, so the samples follow the
    model's distribution exactly), in chunks of at most ``batch_size`` rows; the chunk whose first
    row is ``start`` draws its noise from seed ``seed + start``. ``generation``: "fast", the lean
    loop of :mod:`.decoding` (each prompt prefilled once; models it cannot sample as ``generate``
    does fall back, logged once), or "hf", ``model.generate`` (left-padded rows, torch's global
    seed set per chunk: callers fork the RNG). ``entropy_sums``, a list, receives each sampled
    row's summed per-token entropy (:mod:`.decoding`; the fast loop only: left empty otherwise)."""
    problem = fast_path_problem(model) if generation == "fast" else None
    if problem is not None:
        _log_once(f"generation: fast is off for {type(unwrap(model)).__name__} ({problem}); sampling with "
                  f"HF generate (same distribution, slower).")
    was_training = model.training
    model.eval()
    try:
        if generation == "fast" and problem is None:
            return _fast_ids(model, tokenizer, prompts, repeats, max_new_tokens=max_new_tokens, seed=seed,
                             temperature=temperature, top_p=top_p, batch_size=batch_size, greedy=greedy,
                             entropy_sums=entropy_sums)
        rows = [p for p in prompts for _ in range(repeats)]
        return _hf_ids(model, tokenizer, rows, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                       top_p=top_p, batch_size=batch_size, greedy=greedy)
    finally:
        model.train(was_training)


def _fast_ids(model, tokenizer, prompts, repeats, *, seed, batch_size, entropy_sums, **options) -> list[list[int]]:
    """The lean loop over chunks of whole groups (at least one prompt's ``repeats`` rows a chunk)."""
    device = next(model.parameters()).device
    step = max(1, batch_size // repeats)
    out = []
    for first in range(0, len(prompts), step):
        generator = torch.Generator(device=device).manual_seed(seed + first * repeats)
        decoded = decode(model, prompts[first:first + step], repeats, eos=tokenizer.eos_token_id,
                         pad=tokenizer.pad_token_id, generator=generator, with_entropy=entropy_sums is not None,
                         **options)
        out += [cut(new, tokenizer.eos_token_id) for new in decoded.tokens.tolist()]
        if decoded.entropy is not None:
            entropy_sums += decoded.entropy.sum(-1).tolist()
    return out


def _hf_ids(model, tokenizer, prompts, *, max_new_tokens, seed, temperature, top_p, batch_size, greedy):
    """``model.generate`` on left-padded chunks of ``batch_size`` rows."""
    device = next(model.parameters()).device
    eos, out = tokenizer.eos_token_id, []
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
        out += [cut(new, eos) for new in generated[:, width:].tolist()]
    return out


def cut(new: list[int], eos: int) -> list[int]:
    """Generated ids up to and including the first EOS (the padding after it dropped)."""
    return new[:new.index(eos) + 1] if eos in new else new


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.warning(message)


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
                    batch_size: int = 256, generation: str = "fast") -> Samples:
    """``n`` sampled completions per context, its prompt tokenized as the text plugin tokenizes
    training prompts (:func:`mmalign_text.records.tokenize_prompt`: BOS, chat template), each
    prompt prefilled once (:func:`generate_ids`; ``generation``: "fast" or "hf").
    ``temperature=0`` decodes greedily (top_p is then unused).
    ``responses``: decoded texts [C][n]; ``trajectory``: {"prompt_ids": [C], "completion_ids": [C][n],
    "finished": [C][n] (the completion ends with EOS), "entropy_sums": [C][n] (each completion's
    summed per-token entropy; sampled by the fast loop only)};
    ``examples``: one :class:`TextGroup` per context."""
    records = [context_record(c, i) for i, c in enumerate(contexts)]
    prompts = [tokenize_prompt(tokenizer, r, limits) for r in records]
    for r, p in zip(records, prompts):
        if not p:
            raise DataError(f"{r.where}: the prompt tokenizes to no tokens; sampling needs at least one "
                            f"(give a non-empty prompt, or a tokenizer that adds BOS).")
    seed, entropy_sums = draw_seed(generator), []
    with rng_fork(model):
        new = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                           top_p=top_p, batch_size=batch_size, greedy=temperature == 0, repeats=n,
                           generation=generation, entropy_sums=entropy_sums)
    completions = [new[i * n:(i + 1) * n] for i in range(len(prompts))]
    responses = [[tokenizer.decode(c, skip_special_tokens=True) for c in cs] for cs in completions]
    groups = [TextGroup(p, cs, r.where) for p, cs, r in zip(prompts, completions, records)]
    finished = [[bool(c) and c[-1] == tokenizer.eos_token_id for c in cs] for cs in completions]
    trajectory = {"prompt_ids": prompts, "completion_ids": completions, "finished": finished}
    if entropy_sums:
        trajectory["entropy_sums"] = [entropy_sums[i * n:(i + 1) * n] for i in range(len(prompts))]
    return Samples(list(contexts), responses, groups, trajectory)
