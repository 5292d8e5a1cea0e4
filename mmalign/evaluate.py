"""Evaluators: held-out metrics of a policy. ``reward_accuracy`` is the built-in one."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mmalign.hookspecs import hookimpl
from mmalign.losses import LossSpec


@dataclass
class EvalContext:
    policy: torch.nn.Module
    reference: Any  # a reference strategy (mmalign.reference) or None
    reward: Any  # the modality plugin
    examples: list
    loss: LossSpec
    beta: float
    batch_size: int
    seed: int
    autocast: Callable = nullcontext
    options: dict | None = None  # the loss's keyword options (loss.options)
    evaluator_options: dict | None = None  # eval.options: {evaluator name: {option: value}}

    def options_for(self, name: str) -> dict:
        return dict((self.evaluator_options or {}).get(name, {}))


def reward_accuracy(ctx: EvalContext) -> dict[str, float]:
    """Implicit-reward accuracy on held-out pairs: the share of pairs with
    beta * (s_pol(y_w) - s_ref(y_w)) > beta * (s_pol(y_l) - s_ref(y_l)), the mean margin, and the
    held-out loss. Random draws (diffusion noise) come from a generator seeded by ``seed`` so that
    every evaluation sees the same ones."""
    if not ctx.loss.paired:
        return {}
    from mmalign.losses.objective import preference_loss

    generator = torch.Generator().manual_seed(ctx.seed)
    device = next(ctx.policy.parameters()).device
    was_training = ctx.policy.training
    ctx.policy.eval()
    totals = {"correct": 0.0, "margin": 0.0, "loss": 0.0, "n": 0}
    per_subset: dict[str, list[int]] = {}
    with torch.no_grad():
        for start in range(0, len(ctx.examples), ctx.batch_size):
            chunk = ctx.examples[start:start + ctx.batch_size]
            batch = ctx.reward.to_device(ctx.reward.collate(chunk, generator), device)
            ref = ctx.reference.scores(ctx.reward, batch, ctx.autocast) if ctx.reference else None
            with ctx.autocast():
                pol = ctx.reward.score(ctx.policy, batch)
            loss, _ = preference_loss(ctx.loss, pol, ref, beta=ctx.beta, options=ctx.options or {})
            r_c = ctx.beta * (pol.chosen - (ref.chosen if ref else 0.0))
            r_r = ctx.beta * (pol.rejected - (ref.rejected if ref else 0.0))
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


def subset_of(example) -> str | None:
    subset = getattr(example, "subset", None)
    if subset is None and isinstance(getattr(example, "fields", None), dict):
        subset = example.fields.get("subset")
    return None if subset is None else str(subset)


def run_evaluators(cfg, reg, reward, policy, reference, examples, spec, autocast) -> dict[str, float]:
    """Run every evaluator named in ``cfg.eval.evaluators``; keys come back prefixed ``eval/``."""
    ctx = EvalContext(policy, reference, reward, examples, spec, cfg.loss.beta,
                      cfg.eval.batch_size, cfg.seed, autocast, cfg.loss.options, cfg.eval.options)
    results: dict[str, float] = {}
    for name in cfg.eval.evaluators:
        for key, value in reg.get("evaluators", name, "eval.evaluators")(ctx).items():
            results[f"eval/{key}"] = value
    return results


@hookimpl
def mmalign_register_evaluators(register):
    register("reward_accuracy", reward_accuracy)
