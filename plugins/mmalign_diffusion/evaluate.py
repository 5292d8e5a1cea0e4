"""``diffusion_accuracy``: implicit-reward accuracy on held-out pairs, averaged over noise draws.

A single (eps, t) draw is a noisy estimate of the diffusion score, so the implicit reward margin
    m = beta * ((s_pol(w) - s_ref(w)) - (s_pol(l) - s_ref(l)))
is averaged over ``model.options.eval_draws`` draws per pair before it is compared with 0. Ties
(m == 0, e.g. policy == reference) count one half, as in the diffusers DPO scripts' implicit_acc,
so the reference itself scores 0.5. The draws come from a generator seeded by the run's seed: every
evaluation of every model sees the same noise.
"""

from __future__ import annotations

import torch

from mmalign.evaluate import scored_batches
from mmalign.errors import ConfigError
from mmalign.scores import implicit_reward


def pair_margins(ctx, draws: int) -> torch.Tensor:
    """[N] implicit-reward margins of the held-out pairs, each the mean over ``draws`` draws."""
    generator = torch.Generator().manual_seed(ctx.seed)
    was_training = ctx.policy.training
    ctx.policy.eval()
    total = torch.zeros(len(ctx.examples))
    with torch.no_grad():
        for _ in range(draws):
            margins = []
            for _, pol, ref in scored_batches(ctx, generator):
                rewards = implicit_reward(pol.sums, ref.sums if ref else None, ctx.beta)
                margins.append((rewards[:, 0] - rewards[:, 1]).float().cpu())
            total += torch.cat(margins)
    ctx.policy.train(was_training)
    return total / draws


def diffusion_accuracy(ctx) -> dict[str, float]:
    if not hasattr(ctx.reward, "eval_draws"):
        raise ConfigError("eval.evaluators: 'diffusion_accuracy' applies to model.reward: diffusion; "
                          "use reward_accuracy for other modalities.")
    if not ctx.loss.paired or not ctx.examples:
        return {}
    draws = max(1, ctx.reward.eval_draws)
    margins = pair_margins(ctx, draws)
    accuracy = ((margins > 0).float() + 0.5 * (margins == 0).float()).mean()
    return {"implicit_accuracy": float(accuracy), "implicit_margin": float(margins.mean()),
            "pairs": len(margins), "draws": draws}
