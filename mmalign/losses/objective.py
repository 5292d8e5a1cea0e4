"""The training objective of one batch: scores -> scalar loss and its metrics, for any loss."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from mmalign.losses.spec import LossSpec, call_loss, nll_term
from mmalign.reward import PairScores


def preference_loss(spec: LossSpec, pol: PairScores, ref: PairScores | None, *, beta: float,
                    options: dict, sft_weight: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Scores -> (scalar loss, detached metrics). Implicit reward r = beta * (s_policy - s_ref)."""
    rc = ref.chosen if ref is not None else None
    rr = ref.rejected if ref is not None else None
    lengths = (pol.chosen_lengths, pol.rejected_lengths)
    if "extras" in inspect.signature(spec.fn).parameters:  # losses that need further scores
        options = dict(options, extras=(pol.extras, ref.extras if ref is not None else {}))
    losses = call_loss(spec, pol.chosen, pol.rejected, rc, rr, beta=beta, lengths=lengths,
                       options=options)
    if "pair_weight" in pol.extras:  # per-pair weights from the plugin (WPO)
        losses = losses * pol.extras["pair_weight"]
    loss = losses.mean()
    nll = nll_term(pol.chosen, pol.chosen_lengths).mean()
    if sft_weight:
        loss = loss + sft_weight * nll
    with torch.no_grad():
        metrics = {"loss": loss.detach(), "nll": nll.detach(), "logps/chosen": pol.chosen.mean()}
        r_chosen = beta * (pol.chosen - (rc if rc is not None else 0.0))
        metrics["rewards/chosen"] = r_chosen.mean()
        if pol.rejected is not None:
            r_rejected = beta * (pol.rejected - (rr if rr is not None else 0.0))
            metrics.update({
                "rewards/rejected": r_rejected.mean(),
                "rewards/margins": (r_chosen - r_rejected).mean(),
                "rewards/accuracies": (r_chosen > r_rejected).float().mean(),
                "logps/rejected": pol.rejected.mean(),
            })
    return loss, {k: v.detach().float() for k, v in metrics.items()}
