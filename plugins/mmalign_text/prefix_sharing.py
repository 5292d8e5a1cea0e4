"""Prefix sharing and padding-free packing of preference pairs.

Prefix sharing (Wang & Hegde 2024, "Accelerating Direct Preference Optimization with Prefix
Sharing"): a pair is one segment ``[prompt | chosen | rejected]``. The prompt is computed once; the
4D attention mask lets chosen tokens see the prompt and earlier chosen tokens, and rejected tokens
see the prompt and earlier rejected tokens (never the chosen ones); position ids restart after the
prompt for the rejected segment, so every token sees exactly what it would in its own sequence.

Packing: where lengths vary, several pairs share one row (first-fit decreasing into rows as wide as
the longest pair, so a batch never has more rows or a wider row than one pair per row would), the
mask keeping pairs apart (block-diagonal) and position ids restarting for every pair. Padding is
what is left at the end of a row, not the difference to the longest pair of the batch.

Windowed layers (sliding window, chunked attention) get the mask restricted to their pattern on the
logical position ids, per layer type (:mod:`.layer_masks`); a model whose pattern that cannot
reproduce is scored on the plain path instead, chosen automatically and logged once.

Scores equal the plain two-rows-per-pair path (tested to 1e-5 in fp32, scores and gradients).
Sampled groups (k responses to one prompt) use the same mask and forward, :mod:`.group_sharing`.
Log-probs are computed only at the N positions that predict a completion token (:mod:`.logps`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor, nn

from mmalign_text.layer_masks import mask_plan
from mmalign_text.logps import target_logps, unwrap

PROMPT, CHOSEN, REJECTED = 0, 1, 2
PAD = -1


@dataclass
class SharedPrefixBatch:
    input_ids: Tensor  # [R, T] rows of one or more pairs [prompt | chosen | rejected], then padding
    attention_mask: Tensor  # [R, 1, T, T] bool: True where query i may attend key j
    position_ids: Tensor  # [R, T]
    target_rows: Tensor  # [N] row of the position that predicts each target token
    target_positions: Tensor  # [N] that position
    targets: Tensor  # [N] pair 0's chosen tokens, its rejected tokens, then pair 1's, ...
    layout: Tensor  # [B, L] index into the N targets: pair i's chosen then rejected tokens (padded)
    chosen_mask: Tensor  # [B, L]
    rejected_mask: Tensor  # [B, L]
    row_pairs: list[list[int]]  # the pairs of each row, in the order they stand in it
    pairs: int
    paired: bool = True
    # The same pairs as 2B right-padded rows (chosen rows, then rejected rows), for models whose
    # attention pattern the 4D mask cannot reproduce (:mod:`.layer_masks`): gathered from the rows above.
    plain_index: Optional[Tensor] = None  # [2B, T'] index into input_ids.flatten() (0 at padding)
    plain_mask: Optional[Tensor] = None  # [2B, T'] 1 at real tokens
    plain_target_rows: Optional[Tensor] = None  # [N] plain row predicting each target
    plain_target_positions: Optional[Tensor] = None  # [N] and the position in it

    def to(self, device: torch.device) -> "SharedPrefixBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return SharedPrefixBatch(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in moved.items()})


def assign_rows(lengths: list[int], pack: bool) -> list[list[int]]:
    """Pair indices per row. ``pack``: first-fit decreasing into rows of the longest pair's width;
    within a row the pairs keep the batch's order. Otherwise one pair per row."""
    if not pack:
        return [[i] for i in range(len(lengths))]
    width = max(lengths)
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = next((r for r, used in enumerate(fill) if used + lengths[i] <= width), None)
        if r is None:
            rows.append([])
            fill.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        fill[r] += lengths[i]
    return [sorted(r) for r in rows]


def collate_shared(examples: list, pad_id: int, pack: bool = True) -> SharedPrefixBatch:
    """Pairs (prompt_ids, chosen_ids, rejected_ids) -> rows of one or more pairs, with the 4D mask."""
    sizes = [(len(e.prompt_ids), len(e.chosen_ids), len(e.rejected_ids)) for e in examples]
    row_pairs = assign_rows([p + c + r for p, c, r in sizes], pack)
    width = max(sum(sum(sizes[i]) for i in row) for row in row_pairs)
    n_rows, b = len(row_pairs), len(examples)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    segment = torch.full((n_rows, width), PAD, dtype=torch.long)
    block = torch.full((n_rows, width), PAD, dtype=torch.long)  # which pair of the row a token is
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    where: list[tuple[int, int]] = [(0, 0)] * b  # (row, offset) of each pair
    for r, row in enumerate(row_pairs):
        offset = 0
        for k, i in enumerate(row):
            e, (p, c, n) = examples[i], sizes[i]
            span = slice(offset, offset + p + c + n)
            input_ids[r, span] = torch.tensor(e.prompt_ids + e.chosen_ids + e.rejected_ids)
            block[r, span] = k
            segment[r, offset:offset + p] = PROMPT
            segment[r, offset + p:offset + p + c] = CHOSEN
            segment[r, offset + p + c:span.stop] = REJECTED
            position_ids[r, span] = torch.cat([torch.arange(p + c), torch.arange(p, p + n)])
            where[i] = (r, offset)
            offset = span.stop
    # Targets in pair order. Chosen token k (at o + p + k) is predicted at o + p + k - 1; rejected
    # token k (at o + p + c + k) at o + p + c + k - 1, except the first, predicted by the prompt's
    # last position o + p - 1.
    rows, positions, targets = [], [], []
    n_targets = max(c + n for _, c, n in sizes)
    layout = torch.zeros((b, n_targets), dtype=torch.long)
    chosen_mask = torch.zeros((b, n_targets), dtype=torch.long)
    rejected_mask = torch.zeros((b, n_targets), dtype=torch.long)
    count = 0
    for i, (e, (p, c, n)) in enumerate(zip(examples, sizes)):
        r, o = where[i]
        positions.append(torch.cat([torch.arange(o + p - 1, o + p + c - 1), torch.tensor([o + p - 1]),
                                    torch.arange(o + p + c, o + p + c + n - 1)]))
        rows.append(torch.full((c + n,), r, dtype=torch.long))
        targets.append(torch.tensor(e.chosen_ids + e.rejected_ids))
        layout[i, :c + n] = torch.arange(count, count + c + n)
        chosen_mask[i, :c] = 1
        rejected_mask[i, c:c + n] = 1
        if p == 0:  # an empty prompt: nothing predicts the first token of either completion
            positions[-1][[0, c]] = o
            chosen_mask[i, 0] = rejected_mask[i, c] = 0
        count += c + n
    return SharedPrefixBatch(input_ids, visibility(segment, block), position_ids, torch.cat(rows), torch.cat(positions),
                             torch.cat(targets), layout, chosen_mask, rejected_mask, row_pairs, b, True,
                             *_plain_layout(sizes, where, width))


def visibility(segment: Tensor, block: Tensor) -> Tensor:
    """The shared 4D mask [R, 1, T, T] (True: query i may attend key j) from each token's segment
    [R, T] (PROMPT, a completion's id, PAD) and block [R, T] (which segment of the row it belongs
    to): causal, within its block, the prompt and its own completion only."""
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    sq, sk = segment[:, :, None], segment[:, None, :]
    allowed = causal & (block[:, :, None] == block[:, None, :]) & (sk != PAD) & ((sk == PROMPT) | (sk == sq))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no NaN)
    return allowed[:, None]


def _plain_layout(sizes: list[tuple[int, int, int]], where: list[tuple[int, int]], width: int):
    """Pair i as plain rows: i = [prompt | chosen], B + i = [prompt | rejected], right-padded; each
    token an index into the flattened shared rows. Target order as in the shared batch (pair 0's
    chosen tokens, its rejected tokens, pair 1's, ...); token k of a completion is predicted at
    plain position p + k - 1 (0 for an empty prompt's first token, which is masked out)."""
    b = len(sizes)
    length = max(p + max(c, n) for p, c, n in sizes)
    index = torch.zeros((2 * b, length), dtype=torch.long)
    mask = torch.zeros((2 * b, length), dtype=torch.long)
    rows, positions = [], []
    for i, ((p, c, n), (r, o)) in enumerate(zip(sizes, where)):
        start = r * width + o
        index[i, :p + c] = torch.arange(start, start + p + c)
        rejected = start + p + c
        index[b + i, :p + n] = torch.cat([torch.arange(start, start + p), torch.arange(rejected, rejected + n)])
        mask[i, :p + c] = 1
        mask[b + i, :p + n] = 1
        rows += [torch.full((c,), i), torch.full((n,), b + i)]
        positions += [torch.arange(p - 1, p + c - 1).clamp(min=0), torch.arange(p - 1, p + n - 1).clamp(min=0)]
    return index, mask, torch.cat(rows).long(), torch.cat(positions)


def shared_token_logps(model: nn.Module, batch: SharedPrefixBatch, inputs_embeds: Tensor | None = None,
                       with_sum_sq: bool = False, fused: bool = True):
    """log p(target) of every target token in the pair layout, [B, L] (zero where masked).
    ``inputs_embeds`` replaces the token embeddings (a VLM passes them with the image features in
    place). With ``with_sum_sq`` also log sum_v p(v)^2 at each target's position, [B, L] (WPO).

    Each layer gets the shared mask restricted to its own attention pattern (sliding window,
    chunks; :mod:`.layer_masks`). For a model whose pattern cannot be reproduced that way, the
    pairs are scored as plain padded rows gathered from the batch: the same targets, the same layout."""
    flat, sum_sq = shared_target_logps(model, batch, inputs_embeds, with_sum_sq=with_sum_sq, fused=fused)
    mask = batch.chosen_mask + batch.rejected_mask
    logps = flat[batch.layout] * mask
    if not with_sum_sq:
        return logps
    return logps, sum_sq[batch.layout] * mask


def shared_tokens(batch) -> Tensor:
    """The non-padding tokens of a shared batch's rows (pairs or sampled groups), each once: every
    one is a prompt or completion token of some response, so these are the distinct places the
    plain rows gather from. A 0-dim tensor on the batch's device (no synchronisation)."""
    seen = torch.zeros(batch.input_ids.numel(), device=batch.plain_mask.device)
    return seen.scatter_reduce(0, batch.plain_index.flatten(), batch.plain_mask.flatten().to(seen.dtype), "amax").sum()


def shared_target_logps(model: nn.Module, batch, inputs_embeds: Tensor | None = None, *,
                        with_sum_sq: bool = False, fused: bool = True) -> tuple[Tensor, Tensor | None]:
    """log p(target) [N] of a shared batch (pairs here, sampled groups in :mod:`.group_sharing`:
    anything with the shared rows, their 4D mask and positions, the targets and the plain layout),
    and log sum_v p(v)^2 [N] with ``with_sum_sq``. Each layer gets the shared mask restricted to
    its pattern; a model whose pattern cannot be reproduced runs the plain rows gathered from it."""
    plan = mask_plan(model)
    if plan is None:
        inputs, rows, positions = _plain_inputs(batch, inputs_embeds)
    else:
        inputs = {"input_ids": batch.input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        dtype = next(unwrap(model).parameters()).dtype
        inputs.update(attention_mask=plan.masks(batch.attention_mask, batch.position_ids, dtype),
                      position_ids=batch.position_ids)
        rows, positions = batch.target_rows, batch.target_positions
    return target_logps(model, inputs, rows, positions, batch.targets, with_sum_sq=with_sum_sq, fused=fused)


def _plain_inputs(batch, inputs_embeds: Tensor | None):
    """The model inputs of the plain path (one right-padded row per response with a padding mask,
    the model's own masks and positions), and where each target is predicted in them."""
    if inputs_embeds is None:
        inputs = {"input_ids": batch.input_ids.flatten()[batch.plain_index]}
    else:
        inputs = {"inputs_embeds": inputs_embeds.flatten(0, 1)[batch.plain_index]}
    inputs["attention_mask"] = batch.plain_mask
    return inputs, batch.plain_target_rows, batch.plain_target_positions
