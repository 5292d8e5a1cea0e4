"""The ``reward_accuracy`` evaluator: implicit-reward accuracy, margin and loss on held-out pairs."""

from __future__ import annotations

import torch

from mmalign.evaluate import EvalContext, scored_batches, subset_of
from mmalign.scores import implicit_reward


def reward_accuracy(ctx: EvalContext) -> dict[str, float]:
    """Implicit-reward accuracy on held-out pairs: the share of pairs with
    beta * (s_pol(y_w) - s_ref(y_w)) > beta * (s_pol(y_l) - s_ref(y_l)), the mean margin, and the
    held-out loss. Random draws (diffusion noise) come from a generator seeded by ``seed`` so that
    every evaluation sees the same ones."""
    if not ctx.loss.paired:
        return {}
    from mmalign.losses.objective import make_objective, objective_loss
    from mmalign.plugins import registry

    objective = make_objective(ctx.loss, beta=ctx.beta, options=ctx.options or {},
                               lookup=lambda name, key: registry().get("losses", name, key))

    generator = torch.Generator().manual_seed(ctx.seed)
    was_training = ctx.policy.training
    ctx.policy.eval()
    totals = {"correct": 0.0, "margin": 0.0, "loss": 0.0, "n": 0}
    per_subset: dict[str, list[int]] = {}
    with torch.no_grad():
        for chunk, pol, ref in scored_batches(ctx, generator):
            loss, _ = objective_loss(objective, pol, ref)
            rewards = implicit_reward(pol.sums, ref.sums if ref else None, ctx.beta)
            r_c, r_r = rewards[:, 0], rewards[:, 1]
            for e, right in zip(chunk, (r_c > r_r).tolist()):
                subset = subset_of(e)
                if subset is not None:
                    hits = per_subset.setdefault(subset, [0, 0])
                    hits[0] += right
                    hits[1] += 1
            totals["correct"] += float((r_c > r_r).float().sum())
            totals["margin"] += float((r_c - r_r).sum())
            totals["loss"] += float(loss) * len(chunk)
            totals["n"] += len(chunk)
    ctx.policy.train(was_training)
    n = max(1, totals["n"])
    results = {"reward_accuracy": totals["correct"] / n, "margin": totals["margin"] / n,
               "loss": totals["loss"] / n, "pairs": totals["n"]}
    # RewardBench-style: accuracy per subset for records that carry a "subset" field
    results.update({f"reward_accuracy/{name}": hits / total for name, (hits, total) in sorted(per_subset.items())})
    return results
