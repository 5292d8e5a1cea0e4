"""Batches of the VLM plugin and the image inputs they carry.

Every example's images are processed once by the processor's image processor into a *group*: a
dict of the tensors the model's forward takes for them (``pixel_values`` and, per family,
``image_sizes`` / ``image_grid_thw`` / ``pixel_attention_mask`` / ``batch_num_images``). A batch
holds one group per example and, per row, which examples' groups stand in it, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from mmalign_text.group_sharing import SharedGroupBatch
from mmalign_text.prefix_sharing import SharedPrefixBatch

Group = dict  # str -> Tensor: one example's image inputs


def move_groups(groups: list[Group], device: torch.device) -> list[Group]:
    return [{k: v.to(device) for k, v in g.items()} for g in groups]


@dataclass
class VLMSharedBatch:
    """Prefix sharing for pairs: one segment [image + prompt | chosen | rejected] per pair, packed
    into rows as in the text plugin."""

    text: SharedPrefixBatch
    groups: list[Group]  # per example
    row_groups: list[list[int]]  # per row, the examples whose images stand in it, in order
    segments: list[tuple[int, int, int, int, int]]  # per pair: (row, offset, prompt, chosen, rejected) lengths
    pairs: int
    paired: bool = True

    def to(self, device: torch.device) -> "VLMSharedBatch":
        return VLMSharedBatch(self.text.to(device), move_groups(self.groups, device), self.row_groups,
                              self.segments, self.pairs)


@dataclass
class VLMGroupBatch:
    """Prefix sharing for sampled groups: segments [images + prompt | r_a | ... | r_b] of one
    context's responses (:mod:`mmalign_text.group_sharing`), packed into rows; each context's
    images encoded once and scattered into every segment of it."""

    text: SharedGroupBatch
    groups: list[Group]  # per context
    row_groups: list[list[int]]  # per row, the context of each segment in it, in order

    def to(self, device: torch.device) -> "VLMGroupBatch":
        return VLMGroupBatch(self.text.to(device), move_groups(self.groups, device), self.row_groups)


def segment_contexts(text: SharedGroupBatch) -> list[list[int]]:
    """Per row of ``text``, the context of each segment in it, in order: a segment starts where its
    prompt does, and each response's plain row begins with its prompt (VLM prompts are never empty)."""
    width, k = text.input_ids.shape[1], text.group
    starts = sorted({divmod(int(first), width) + (i // k,) for i, first in enumerate(text.plain_index[:, 0])})
    rows: list[list[int]] = [[] for _ in range(text.input_ids.shape[0])]
    for row, _, context in starts:
        rows[row].append(context)
    return rows


@dataclass
class VLMBatch:
    input_ids: Tensor  # [R, T], rows: B chosen then B rejected (then B corrupted-image chosen)
    attention_mask: Tensor  # [R, T]
    target_rows: Tensor  # [N] row and position predicting each completion token (see pad_rows)
    target_positions: Tensor  # [N]
    targets: Tensor  # [N]
    layout: Tensor  # [R, L] index into the N targets per row
    target_mask: Tensor  # [R, L]
    groups: list[Group]  # per example
    row_groups: list[list[int]]  # per row, the example whose images stand in it
    pairs: int
    paired: bool
    corrupted_pixel_values: Optional[Tensor] = None  # mDPO (LLaVA): [B, C, H, W]
    group: int = 0  # sampled groups: k responses per context, rows c * k + j (pairs = C contexts)

    def to(self, device: torch.device) -> "VLMBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return VLMBatch(move(self.input_ids), move(self.attention_mask), move(self.target_rows),
                        move(self.target_positions), move(self.targets), move(self.layout),
                        move(self.target_mask), move_groups(self.groups, device), self.row_groups, self.pairs,
                        self.paired, move(self.corrupted_pixel_values), self.group)


def segments_of(examples: list, row_pairs: list[list[int]]) -> list[tuple[int, int, int, int, int]]:
    """Where each pair stands in the shared rows (the layout of collate_shared: a row's pairs
    back to back in order)."""
    out: list = [None] * len(examples)
    for r, row in enumerate(row_pairs):
        offset = 0
        for i in row:
            e = examples[i]
            p, c, n = len(e.prompt_ids), len(e.chosen_ids), len(e.rejected_ids)
            out[i] = (r, offset, p, c, n)
            offset += p + c + n
    return out
