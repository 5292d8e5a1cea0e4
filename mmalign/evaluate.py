"""Evaluators: held-out metrics of a policy. The engine calls :func:`run_evaluators`; the evaluators
themselves come from plugins (``reward_accuracy`` from the built-in ``metrics`` plugin)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mmalign.losses import LossSpec


@dataclass
class EvalContext:
    policy: torch.nn.Module
    reference: Any  # a reference strategy (mmalign_register_references) or None
    reward: Any  # the modality plugin
    examples: list
    loss: LossSpec
    beta: float
    batch_size: int
    seed: int
    autocast: Callable = nullcontext
    options: dict | None = None  # the loss's keyword options (loss.options)
    evaluator_options: dict | None = None  # eval.options: {evaluator name: {option: value}}
    algorithm_options: dict | None = None  # an online run's algorithm.options (its scorers, sampling)
    algorithm: str | None = None  # an online run's algorithm.name

    def options_for(self, name: str) -> dict:
        return dict((self.evaluator_options or {}).get(name, {}))


def scored_batches(ctx: EvalContext, generator: torch.Generator):
    """(examples, policy Scores, reference Scores or None) for each batch of the held-out
    examples, in order; call it under ``torch.no_grad()``. Randomness (diffusion noise) comes from
    ``generator``, so every evaluation can see the same draws."""
    from mmalign.batches import Batch

    device = next(ctx.policy.parameters()).device
    for start in range(0, len(ctx.examples), ctx.batch_size):
        chunk = ctx.examples[start:start + ctx.batch_size]
        batch = Batch(ctx.reward.encode(ctx.reward.to_device(ctx.reward.collate(chunk, generator), device)))
        ref = ctx.reference.scores(batch) if ctx.reference else None
        with ctx.autocast():
            pol = ctx.reward.score(ctx.policy, batch.data)
        yield chunk, pol, ref


def subset_of(example) -> str | None:
    subset = getattr(example, "subset", None)
    if subset is None and isinstance(getattr(example, "fields", None), dict):
        subset = example.fields.get("subset")
    return None if subset is None else str(subset)


def run_evaluators(cfg, reg, reward, policy, reference, examples, objective, autocast) -> dict[str, float]:
    """Run every evaluator named in ``cfg.eval.evaluators``; keys come back prefixed ``eval/``."""
    ctx = EvalContext(policy, reference, reward, examples, objective.spec, cfg.loss.beta,
                      cfg.eval.batch_size, cfg.seed, autocast, cfg.loss.options, cfg.eval.options,
                      cfg.algorithm.options, cfg.algorithm.name)
    results: dict[str, float] = {}
    for name in cfg.eval.evaluators:
        for key, value in reg.get("evaluators", name, "eval.evaluators")(ctx).items():
            results[f"eval/{key}"] = value
    return results
