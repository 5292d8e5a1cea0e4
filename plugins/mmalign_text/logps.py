"""Log-probabilities of target tokens, computed only where a target is predicted and never as
full-vocabulary logits for the whole batch.

    log p(y_n) = z_n[y_n] - logsumexp_v z_n[v],     z_n = head(h[row_n, pos_n])     (n = 1 .. N)

For one forward pass the causal LM's output head is swapped for :class:`TargetLogProbHead`, which
receives the final hidden states [R, T, H] that the model would feed its head, gathers the N
positions that predict a target token (no prompt, no padding, no position predicting the prompt),
and runs the real head on them in chunks of positions. When more than one chunk is needed and
gradients are on, each chunk is recomputed in the backward pass (activation checkpointing), so the
fp32 logits held at any time are ``chunk x V`` rather than ``N x V``. Calling the model's own
forward (rather than its decoder and head separately) keeps DDP, PEFT and accelerate hooks working
unchanged; calling the real head module keeps a LoRA'd or tied head correct.

Models that post-process their logits after the head (Gemma-2 soft-capping, Cohere's logit_scale,
Granite's logits_scaling) would apply that to log-probs: for them :func:`target_logps` computes
the logits with the model's forward instead and gathers the same positions.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# unwrap is also imported from here by prefix_sharing and layer_masks
from mmalign_text.causal_lm import unwrap

CHUNK_ELEMENTS = 1 << 23  # fp32 logits per chunk: 32 MB
POST_HEAD_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _log_softmax_at(head: nn.Module, hidden: Tensor, targets: Tensor, with_sum_sq: bool):
    """[n, H], [n] -> log p(target) [n] (fp32), and log sum_v p(v)^2 [n] (detached) if asked."""
    logits = head(hidden).float()
    lse = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, targets[:, None])[:, 0] - lse
    if not with_sum_sq:
        return logps, None
    with torch.no_grad():
        return logps, torch.logsumexp(2 * (logits - lse[:, None]), dim=-1)


class TargetLogProbHead(nn.Module):
    """Stands in for the LM head during one forward; returns log p(target) [N] as the "logits"
    (with ``with_sum_sq``: [N, 2], log p(target) and log sum_v p(v)^2, through the same output)."""

    def __init__(self, head: nn.Module, rows: Tensor, positions: Tensor, targets: Tensor, with_sum_sq: bool):
        super().__init__()
        self.head = head
        self.rows, self.positions, self.targets = rows, positions, targets
        self.with_sum_sq = with_sum_sq

    def forward(self, hidden: Tensor) -> Tensor:
        picked = hidden[self.rows, self.positions]  # [N, H]
        vocab = self.head.weight.shape[0] if hasattr(self.head, "weight") else 1 << 16
        chunk = max(1, CHUNK_ELEMENTS // vocab)
        recompute = torch.is_grad_enabled() and picked.shape[0] > chunk
        logps, sum_sq = [], []
        for start in range(0, picked.shape[0], chunk):
            args = (self.head, picked[start:start + chunk], self.targets[start:start + chunk], self.with_sum_sq)
            lp, sq = checkpoint(_log_softmax_at, *args, use_reentrant=False) if recompute else _log_softmax_at(*args)
            logps.append(lp)
            sum_sq.append(sq)
        if self.with_sum_sq:
            return torch.stack([torch.cat(logps), torch.cat(sum_sq)], -1)
        return torch.cat(logps)


@contextmanager
def _swapped_head(model: nn.Module, replacement_for):
    base = unwrap(model)
    old = base.get_output_embeddings()
    name = next(n for n, child in base.named_children() if child is old)
    new = replacement_for(old)
    setattr(base, name, new)
    try:
        yield
    finally:
        setattr(base, name, old)


def fused_head_supported(model: nn.Module) -> bool:
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None or not any(child is head for child in base.children()):
        return False
    configs = [base.config] + [getattr(base.config, k) for k in ("text_config",) if hasattr(base.config, k)]
    return not any(getattr(c, a, None) not in (None, 1, 1.0) for c in configs for a in POST_HEAD_ATTRIBUTES)


def target_logps(model: nn.Module, inputs: dict, rows: Tensor, positions: Tensor, targets: Tensor,
                 *, with_sum_sq: bool = False, fused: bool = True) -> tuple[Tensor, Tensor | None]:
    """log p(targets[n]) predicted at ``(rows[n], positions[n])`` of the model's input [R, T]:
    ``[N]`` in fp32, plus log sum_v p(v)^2 at those positions (``[N]``, detached; WPO) when
    ``with_sum_sq``. ``inputs`` are the model's keyword arguments (input_ids or inputs_embeds,
    attention_mask, position_ids, ...)."""
    if fused and fused_head_supported(model):
        with _swapped_head(model, lambda old: TargetLogProbHead(old, rows, positions, targets, with_sum_sq)):
            out = model(**inputs, logits_to_keep=0, use_cache=False).logits
        return (out[:, 0], out[:, 1]) if with_sum_sq else (out, None)
    logits = model(**inputs, use_cache=False).logits[rows, positions]
    return _log_softmax_at(nn.Identity(), logits, targets, with_sum_sq)



def unit_scores(responses: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-unit scores of k responses per context, left-aligned: ``Scores.unit_scores`` and
    ``unit_mask`` [C, k, U], U the longest response (in scored tokens) of the batch.

    ``responses``: k pairs (values [C, L], mask [C, L]); response j of context c is the masked
    entries of row c, in order (a pair layout's chosen and rejected tokens share a row, an empty
    prompt leaves a completion's first token masked). Differentiable in the values; the masked
    sum over U equals ``(values * mask).sum(-1)``."""
    width = max(1, max(int(mask.sum(-1).max()) if mask.numel() else 0 for _, mask in responses))
    scores, masks = [], []
    for values, mask in responses:
        rows, cols = mask.nonzero(as_tuple=True)
        slot = (mask.cumsum(-1) - 1)[rows, cols]  # where each scored token goes among its response's
        out = values.new_zeros((mask.shape[0], width))
        scores.append(out.index_put((rows, slot), values[rows, cols]))
        masks.append((torch.arange(width, device=mask.device)[None] < mask.sum(-1, keepdim=True)).to(mask.dtype))
    return torch.stack(scores, 1), torch.stack(masks, 1)
