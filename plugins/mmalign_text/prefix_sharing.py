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

Scores equal the plain two-rows-per-pair path (tested to 1e-5 in fp32, scores and gradients).
Log-probs are computed only at the N positions that predict a completion token (:mod:`.logps`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

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
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    sq, sk = segment[:, :, None], segment[:, None, :]
    allowed = causal & (block[:, :, None] == block[:, None, :]) & (sk != PAD) & ((sk == PROMPT) | (sk == sq))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no NaN)
    return SharedPrefixBatch(input_ids, allowed[:, None], position_ids, torch.cat(rows), torch.cat(positions),
                             torch.cat(targets), layout, chosen_mask, rejected_mask, row_pairs, b)


def _mask_for(model: nn.Module, allowed: Tensor) -> Tensor:
    """sdpa takes the boolean mask as is; eager attention adds the mask to its scores, so it gets
    an additive one (0 / most negative). Flash attention takes no 4D mask at all."""
    base = unwrap(model)
    impl = getattr(base.config, "_attn_implementation", "sdpa") or "sdpa"
    if impl == "sdpa":
        return allowed
    if "flash" in impl:
        from mmalign.errors import ConfigError

        raise ConfigError(f"prefix sharing needs a 4D attention mask, which attn_implementation "
                          f"'{impl}' does not take. Set model.options.prefix_sharing: false, or use sdpa.")
    dtype = next(base.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def shared_token_logps(model: nn.Module, batch: SharedPrefixBatch, inputs_embeds: Tensor | None = None,
                       with_sum_sq: bool = False, fused: bool = True):
    """log p(target) of every target token in the pair layout, [B, L] (zero where masked).
    ``inputs_embeds`` replaces the token embeddings (a VLM passes them with the image features in
    place). With ``with_sum_sq`` also log sum_v p(v)^2 at each target's position, [B, L] (WPO)."""
    inputs = {"input_ids": batch.input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    inputs.update(attention_mask=_mask_for(model, batch.attention_mask), position_ids=batch.position_ids)
    flat, sum_sq = target_logps(model, inputs, batch.target_rows, batch.target_positions, batch.targets,
                                with_sum_sq=with_sum_sq, fused=fused)
    mask = batch.chosen_mask + batch.rejected_mask
    logps = flat[batch.layout] * mask
    if not with_sum_sq:
        return logps
    return logps, sum_sq[batch.layout] * mask
