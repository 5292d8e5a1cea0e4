"""Prefix sharing for sampled groups: the k responses to one prompt in one segment.

An online step scores C prompts with k sampled responses each. As plain rows the prompt is computed
k times; here a context is one segment ``[prompt | r_1 | ... | r_k]`` (or a few segments of s
responses each, below), with the pair machinery of :mod:`.prefix_sharing`: a 4D mask lets each
response see the prompt and its own earlier tokens only, and position ids restart after the prompt
for every response, so each token sees exactly what it sees in its own sequence. Packing puts
segments of different lengths into shared rows (first-fit decreasing, ``model.options.packing``).
Windowed layers get the mask restricted to their pattern; a model whose pattern cannot be
reproduced runs plain rows gathered from the batch (:func:`.prefix_sharing.shared_target_logps`).

Segment size. Sharing saves the prompt's k - 1 repeats, but a custom mask makes attention cost the
full square of the row: a segment of s responses costs about ``a W + b W^2`` per layer with
``W = P + s L``, ``a = 2 (4 H^2 + 3 H I)`` (projections and MLP) and ``b = 4 H`` (scores and
values), H the hidden size and I the MLP width. :func:`responses_per_segment` picks the s in 1..k
with the least estimated cost (s = 1: the plain rows): long prompts and short answers share all k,
long answers to short prompts fewer. On the ``grpo`` benchmark (P = L = 64, k = 8, H = 256,
I = 688; policy forward and backward plus reference forward, 2 CPU cores) it picks s = 4, also the
fastest measured: 0.43 s against 0.47 s (s = 8), 0.48 s (s = 2) and 0.58 s (plain rows).

Scores equal the plain path's (tested to 1e-5 in fp32, scores, per-token scores and gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor

from mmalign_text.sources import pretrained_config
from mmalign_text.prefix_sharing import PAD, PROMPT, assign_rows, visibility


@dataclass
class SharedGroupBatch:
    input_ids: Tensor  # [R, T] rows of segments [prompt | r_a | ... | r_b], then padding
    attention_mask: Tensor  # [R, 1, T, T] bool: True where query i may attend key j
    position_ids: Tensor  # [R, T] each response's positions continue its prompt's
    target_rows: Tensor  # [N] row of the position that predicts each target token
    target_positions: Tensor  # [N] that position
    targets: Tensor  # [N] response 0 of context 0's tokens, its response 1's, ..., context 1's
    layout: Tensor  # [C k, L] index into the N targets: response j of context c in row c k + j (padded)
    target_mask: Tensor  # [C k, L]
    pairs: int  # C, the contexts (named as TextBatch names them)
    group: int  # k responses per context
    # The same responses as C k right-padded plain rows [prompt | response], gathered from the rows
    # above: for models whose attention pattern the 4D mask cannot reproduce, and for a value model.
    plain_index: Tensor  # [C k, T'] index into input_ids.flatten() (0 at padding)
    plain_mask: Tensor  # [C k, T'] 1 at real tokens
    plain_target_rows: Tensor  # [N] plain row predicting each target
    plain_target_positions: Tensor  # [N] and the position in it
    paired: bool = False
    labels: Optional[Tensor] = None

    def to(self, device: torch.device) -> "SharedGroupBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return SharedGroupBatch(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in moved.items()})

    def plain_rows(self) -> tuple[Tensor, ...]:
        """(input_ids, attention_mask, target_rows, target_positions, targets, layout, target_mask)
        of the plain rows, as :func:`mmalign_text.causal_lm.pad_rows` lays them out."""
        return (self.input_ids.flatten()[self.plain_index], self.plain_mask, self.plain_target_rows,
                self.plain_target_positions, self.targets, self.layout, self.target_mask)


def responses_per_segment(prompts: list[int], completions: list[list[int]], cost_ratio: Optional[float]) -> int:
    """s in 1..k with the least estimated cost (module docstring) of C ceil(k / s) rows as wide as
    the widest segment, ``cost_ratio`` = b / a; None (unknown model): all k responses in one
    segment. ``prompts``: C prompt lengths; ``completions``: C lists of k response lengths."""
    k = len(completions[0])
    if cost_ratio is None:
        return k
    ends = torch.tensor(completions, dtype=torch.float64).cumsum(1)
    ends = torch.cat([ends.new_zeros((len(prompts), 1)), ends], 1)  # [C, k + 1] response j ends at ends[:, j + 1]
    prompt = torch.tensor(prompts, dtype=torch.float64)[:, None]

    def cost(s: int) -> float:
        first = torch.arange(0, k, s)
        width = float((prompt + ends[:, (first + s).clamp(max=k)] - ends[:, first]).max())
        return len(prompts) * math.ceil(k / s) * (width + cost_ratio * width ** 2)

    return min(range(1, k + 1), key=lambda s: (cost(s), -s))


def cost_ratio(config) -> Optional[float]:
    """b / a = 2 / (4 H + 3 I) of a transformers config (its text config); None without the sizes."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if hasattr(config, k)), None)
    inner = next((getattr(config, k) for k in ("intermediate_size", "n_inner", "ffn_dim") if hasattr(config, k)), None)
    if not isinstance(hidden, int):
        return None
    inner = inner if isinstance(inner, int) else 4 * hidden  # GPT-2's n_inner None means 4 H
    return 2 / (4 * hidden + 3 * inner)


def model_cost_ratio(model_cfg) -> Optional[float]:
    """:func:`cost_ratio` of ``model.name_or_path``'s or ``model.tiny``'s config, read without
    weights; None when it cannot be read (loading the model reports why)."""
    from transformers import AutoConfig

    try:
        if model_cfg.name_or_path is not None:
            return cost_ratio(pretrained_config(model_cfg))
        if model_cfg.tiny is not None:
            tiny = dict(model_cfg.tiny)
            return cost_ratio(AutoConfig.for_model(tiny.pop("model_type", "llama"), **tiny))
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def collate_groups(groups: list, pad_id: int, pack: bool = True, per_segment: Optional[int] = None) -> SharedGroupBatch:
    """Groups (``prompt_ids``, k ``completions``) -> rows of segments of ``per_segment`` responses
    (default all k), with the 4D mask. A response's first token is predicted by its prompt's last
    position; with an empty prompt nothing predicts it and it is not scored (as on the plain rows)."""
    k = len(groups[0].completions)
    s = per_segment or k
    segments = [(c, range(j, min(j + s, k))) for c in range(len(groups)) for j in range(0, k, s)]
    lengths = [len(groups[c].prompt_ids) + sum(len(groups[c].completions[j]) for j in js) for c, js in segments]
    rows = assign_rows(lengths, pack)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    segment = torch.full((len(rows), width), PAD, dtype=torch.long)
    block = torch.full((len(rows), width), PAD, dtype=torch.long)  # which segment of the row a token is
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    starts: dict[tuple[int, int], tuple[int, int, int]] = {}  # (c, j) -> (row, prompt start, response start)
    for r, row in enumerate(rows):
        offset = 0
        for b, i in enumerate(row):
            c, js = segments[i]
            prompt = groups[c].prompt_ids
            p = len(prompt)
            input_ids[r, offset:offset + p] = torch.tensor(prompt, dtype=torch.long)
            segment[r, offset:offset + p] = PROMPT
            position_ids[r, offset:offset + p] = torch.arange(p)
            at = offset + p
            for j in js:
                ids = groups[c].completions[j]
                input_ids[r, at:at + len(ids)] = torch.tensor(ids, dtype=torch.long)
                segment[r, at:at + len(ids)] = j + 1
                position_ids[r, at:at + len(ids)] = torch.arange(p, p + len(ids))
                starts[c, j] = (r, offset, at)
                at += len(ids)
            block[r, offset:at] = b
            offset = at
    return SharedGroupBatch(input_ids, visibility(segment, block), position_ids, pairs=len(groups), group=k,
                            **_targets(groups, starts, width))


def _targets(groups: list, starts: dict, width: int) -> dict:
    """Targets in response order (context-major), where each is predicted in the shared rows and
    in the plain rows, the layout [C k, L] and its mask, and the plain rows' gather index."""
    k = len(groups[0].completions)
    sizes = [(len(g.prompt_ids), len(ids)) for g in groups for ids in g.completions]
    plain_width = max(p + n for p, n in sizes)
    index = torch.zeros((len(sizes), plain_width), dtype=torch.long)
    plain_mask = torch.zeros((len(sizes), plain_width), dtype=torch.long)
    layout = torch.zeros((len(sizes), max(n for _, n in sizes)), dtype=torch.long)
    target_mask = torch.zeros_like(layout)
    rows, positions, plain_rows, plain_positions, targets = [], [], [], [], []
    count = 0
    for i, (p, n) in enumerate(sizes):
        c, j = divmod(i, k)
        r, prompt_at, at = starts[c, j]
        index[i, :p + n] = torch.cat([torch.arange(prompt_at, prompt_at + p), torch.arange(at, at + n)]) + r * width
        plain_mask[i, :p + n] = 1
        skip = 1 if p == 0 else 0  # an empty prompt: nothing predicts the first token
        before = torch.arange(at - 1 + skip, at + n - 1)  # token m is predicted at m - 1 ...
        if p and n:
            before[0] = prompt_at + p - 1  # ... the first by the prompt's last position
        positions.append(before)
        plain_positions.append(torch.arange(p - 1 + skip, p + n - 1))
        rows.append(torch.full((len(before),), r, dtype=torch.long))
        plain_rows.append(torch.full((len(before),), i, dtype=torch.long))
        targets.append(torch.tensor(groups[c].completions[j][skip:], dtype=torch.long))
        m = len(before)
        layout[i, :m] = torch.arange(count, count + m)
        target_mask[i, :m] = 1
        count += m
    return dict(target_rows=torch.cat(rows), target_positions=torch.cat(positions), targets=torch.cat(targets),
                layout=layout, target_mask=target_mask, plain_index=index, plain_mask=plain_mask,
                plain_target_rows=torch.cat(plain_rows), plain_target_positions=torch.cat(plain_positions))
