"""The scoring paths of the VLM reward (see docs/vlm.md), chosen per batch and logged once:

- shared (default for pairs): one segment [images + prompt | chosen | rejected] per pair, packed
  into rows with a 4D mask (:mod:`mmalign_text.prefix_sharing`); the vision tower runs once per
  pair and the features are scattered into the placeholders. Qwen2-VL's M-RoPE positions are made
  per segment with the model's own ``get_rope_index``.
- once: two rows per pair, the image features computed once per pair and scattered into both.
- plain (``encode_once: false``, and mDPO on families other than LLaVA): the model's own forward
  with the processor's image outputs for every row.
- sampled groups (online algorithms): segments [images + prompt | r_1 | ... | r_s] sharing the
  prompt among a context's responses (:mod:`mmalign_text.group_sharing`, s by its cost estimate),
  each context's images encoded once and scattered into each of its segments; k plain rows per
  context (images still encoded once) with ``prefix_sharing: false`` and for M-RoPE families.

    s(x, y) = sum_t log p_theta(y_t | images, prompt, y_<t)     (image and prompt tokens masked)

Mixed into :class:`mmalign_vlm.reward.VLMReward`, whose ``family`` and ``options`` it uses.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import Tensor, nn

from mmalign.errors import DataError
from mmalign.scores import Scores
from mmalign.sharding import run_as_forward
from mmalign_text.causal_lm import unwrap
from mmalign_text.layer_masks import mask_plan
from mmalign_text.logps import target_logps, unit_scores
from mmalign_text.prefix_sharing import shared_target_logps, shared_token_logps
from mmalign_vlm.batches import Group, VLMBatch, VLMGroupBatch, VLMSharedBatch
from mmalign_vlm.families import rope_positions

log = logging.getLogger("mmalign")
_logged: set[str] = set()


def log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.info(message)


class VLMScoring:
    """score and the image-feature helpers of the VLM reward."""

    def image_features(self, model: nn.Module, groups: list[Group]) -> list[Tensor]:
        """Projected image features per example [n_tokens, H]: one vision-tower call for all. Not
        the model's forward, so under FSDP2 it runs as part of one (run_as_forward)."""
        return run_as_forward(model, self.family.features, unwrap(model), self.family.batch(groups),
                              [_image_count(g) for g in groups])

    def score(self, model: nn.Module, batch, *, per_unit: bool = False) -> Scores:
        """Summed completion log-probs [C, k] (pairs: k = 2; SFT: 1; sampled groups: n), with
        ``per_unit`` also the per-token log-probs [C, k, U]; on every path."""
        if isinstance(batch, VLMSharedBatch):
            return self._score_shared(model, batch, per_unit)
        if isinstance(batch, VLMGroupBatch):
            return self._score_groups(model, batch, per_unit)
        once = self.options["encode_once"]
        log_once(f"vlm plugin: {self.family.name} pairs scored on the {'once-per-pair' if once else 'plain'} path")
        inputs = self._inputs_once(model, batch) if once else self._inputs_plain(model, batch)
        flat, _ = target_logps(model, {**inputs, "attention_mask": batch.attention_mask}, batch.target_rows,
                               batch.target_positions, batch.targets, fused=self.options["fused_logps"])
        mask, b = batch.target_mask, batch.pairs
        token_logps = flat[batch.layout] * mask
        k = batch.group or (2 if batch.paired else 1)
        # row of response j of context c: c * k + j for groups, j * B + c for pairs (mDPO's rows after)
        responses = [(token_logps[j::k], mask[j::k]) if batch.group else
                     (token_logps[j * b:(j + 1) * b], mask[j * b:(j + 1) * b]) for j in range(k)]
        extras = {}
        if batch.corrupted_pixel_values is not None:
            extras["chosen_corrupted"] = token_logps[2 * b:3 * b].sum(-1)
        return _scores(responses, per_unit, extras)

    def _score_shared(self, model: nn.Module, batch: VLMSharedBatch, per_unit: bool) -> Scores:
        t = batch.text
        feats = self.image_features(model, batch.groups)
        embeds = self._embeds_with_images(model, t.input_ids, feats, batch.row_groups)
        if self.family.mrope:
            if not _full_attention(model):  # 3D positions need the 4D-mask path; else two rows per pair
                log_once(f"vlm plugin: {self.family.name} pairs scored on the once-per-pair path "
                         f"(its attention pattern takes no shared 4D mask)")
                return self._score_shared_as_rows(model, batch, embeds, per_unit)
            t = replace(t, position_ids=self._shared_rope(model, batch))
        log_once(f"vlm plugin: {self.family.name} pairs scored on the shared (prefix sharing"
                 f"{' + packing' if self.options['packing'] else ''}) path")
        logps = shared_token_logps(model, t, inputs_embeds=embeds, fused=self.options["fused_logps"])
        return _scores([(logps * t.chosen_mask, t.chosen_mask), (logps * t.rejected_mask, t.rejected_mask)], per_unit)

    def _score_groups(self, model: nn.Module, batch: VLMGroupBatch, per_unit: bool) -> Scores:
        """Sampled groups sharing their prompts: each context's images encoded once, scattered into
        every segment of it; response j of context c is row c k + j of the layout."""
        t = batch.text
        feats = self.image_features(model, batch.groups)
        embeds = self._embeds_with_images(model, t.input_ids, feats, batch.row_groups)
        log_once(f"vlm plugin: {self.family.name} sampled groups scored on the shared (prefix sharing"
                 f"{' + packing' if self.options['packing'] else ''}) path")
        flat, _ = shared_target_logps(model, t, inputs_embeds=embeds, fused=self.options["fused_logps"])
        token_logps, mask, k = flat[t.layout] * t.target_mask, t.target_mask, t.group
        return _scores([(token_logps[j::k], mask[j::k]) for j in range(k)], per_unit)

    def _shared_rope(self, model: nn.Module, batch: VLMSharedBatch) -> Tensor:
        """M-RoPE positions [3, R, T] of the shared rows: each segment's prompt + chosen and prompt +
        rejected get the positions the model's own get_rope_index gives them as separate rows."""
        ids, base = batch.text.input_ids, unwrap(model)
        positions = torch.zeros((3,) + tuple(ids.shape), dtype=torch.long, device=ids.device)
        for i, (r, o, p, c, n) in enumerate(batch.segments):
            grid = batch.groups[i]["image_grid_thw"]
            with_chosen = ids[r, o:o + p + c]
            with_rejected = torch.cat([ids[r, o:o + p], ids[r, o + p + c:o + p + c + n]])
            chosen = rope_positions(base, with_chosen[None], grid, torch.ones_like(with_chosen)[None],
                                    base.config.image_token_id)
            rejected = rope_positions(base, with_rejected[None], grid, torch.ones_like(with_rejected)[None],
                                      base.config.image_token_id)
            positions[:, r, o:o + p + c] = chosen[:, 0]
            positions[:, r, o + p + c:o + p + c + n] = rejected[:, 0, p:]
        return positions

    def _score_shared_as_rows(self, model: nn.Module, batch: VLMSharedBatch, embeds: Tensor,
                              per_unit: bool) -> Scores:
        """The shared batch's pairs as 2B padded rows (chosen rows, then rejected rows), with their
        own M-RoPE positions."""
        t, base = batch.text, unwrap(model)
        ids = t.input_ids.flatten()[t.plain_index] * t.plain_mask
        grids = [batch.groups[i % batch.pairs]["image_grid_thw"] for i in range(2 * batch.pairs)]
        positions = rope_positions(base, ids, torch.cat(grids), t.plain_mask, base.config.image_token_id)
        inputs = {"inputs_embeds": embeds.flatten(0, 1)[t.plain_index], "attention_mask": t.plain_mask,
                  "position_ids": positions}
        flat, _ = target_logps(model, inputs, t.plain_target_rows, t.plain_target_positions, t.targets,
                               fused=self.options["fused_logps"])
        mask = t.chosen_mask + t.rejected_mask
        logps = flat[t.layout] * mask
        return _scores([(logps * t.chosen_mask, t.chosen_mask), (logps * t.rejected_mask, t.rejected_mask)], per_unit)

    def _embeds_with_images(self, model: nn.Module, input_ids: Tensor, feats: list[Tensor],
                            row_groups: list[list[int]], extra: list[Tensor] | None = None) -> Tensor:
        """Token embeddings with each row's image features (its examples' in order, then ``extra``
        rows: mDPO's corrupted images) scattered into the image placeholder positions, as the
        model's own forward does."""
        base = unwrap(model)
        rows = [feats[i] for idx in row_groups for i in idx] + list(extra or [])
        row_feats = torch.cat(rows)
        embeds = base.get_input_embeddings()(input_ids)
        mask = (input_ids == base.config.image_token_id).unsqueeze(-1)
        if int(mask.sum()) != row_feats.shape[0]:
            raise DataError(f"{int(mask.sum())} image placeholder tokens but {row_feats.shape[0]} image "
                            f"features: check the processor's image settings against the model's vision config.")
        return embeds.masked_scatter(mask, row_feats.to(embeds.dtype))

    def _inputs_once(self, model: nn.Module, batch: VLMBatch) -> dict:
        feats = self.image_features(model, batch.groups)
        extra = None
        if batch.corrupted_pixel_values is not None:  # mDPO: one corrupted image per extra row
            extra = self.image_features(model, [{"pixel_values": p[None]} for p in batch.corrupted_pixel_values])
        inputs = {"inputs_embeds": self._embeds_with_images(model, batch.input_ids, feats, batch.row_groups, extra)}
        if self.family.mrope:
            base = unwrap(model)
            grids = torch.cat([batch.groups[i]["image_grid_thw"] for idx in batch.row_groups for i in idx])
            inputs["position_ids"] = rope_positions(base, batch.input_ids, grids, batch.attention_mask,
                                                    base.config.image_token_id)
        return inputs

    def _inputs_plain(self, model: nn.Module, batch: VLMBatch) -> dict:
        """The model's own forward: every row gets its images' processor outputs (the vision tower
        runs for every row)."""
        rows = [batch.groups[i] for idx in batch.row_groups for i in idx]
        if batch.corrupted_pixel_values is not None:
            rows += [{"pixel_values": p[None]} for p in batch.corrupted_pixel_values]
        inputs = {"input_ids": batch.input_ids, **self.family.batch(rows)}
        if self.family.mrope:
            inputs["mm_token_type_ids"] = (batch.input_ids == unwrap(model).config.image_token_id).int()
        return inputs


def _scores(responses: list[tuple[Tensor, Tensor]], per_unit: bool, extras: dict | None = None) -> Scores:
    """Scores [C, k] of k responses given as (token log-probs [C, L], mask [C, L]), zero where
    masked; with ``per_unit`` their tokens left-aligned in unit_scores / unit_mask [C, k, U]."""
    sums = torch.stack([v.sum(-1) for v, _ in responses], 1)
    units = torch.stack([m.sum(-1) for _, m in responses], 1)
    per_unit_fields = dict(zip(("unit_scores", "unit_mask"), unit_scores(responses))) if per_unit else {}
    return Scores(sums, units, extras=extras or {}, **per_unit_fields)


def _image_count(group: Group) -> int:
    if "image_grid_thw" in group:
        return group["image_grid_thw"].shape[0]
    if "image_sizes" in group:
        return group["image_sizes"].shape[0]
    return group["pixel_values"].shape[0]


def _full_attention(model: nn.Module) -> bool:
    """Whether the model takes the shared 4D mask as is in every layer (no windowed layers)."""
    plan = mask_plan(model)
    if plan is None:
        return False
    patterns = [plan.single] if plan.single is not None else list(plan.by_type.values())
    return all(p.kind == "full" for p in patterns)
