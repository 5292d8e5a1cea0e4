"""The training objective of one batch: scores -> scalar loss and its metrics, for any loss.

A loss is bound once at start-up (:func:`make_objective`: its options checked and parsed, its
needs checked against the plugin by :func:`check_fits`); every micro-batch then goes through
:func:`objective_loss`, which calls the loss the one way there is (:func:`loss_values`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from mmalign.errors import ConfigError
from mmalign.losses.spec import LossSpec, call_loss, nll_term
from mmalign.scores import Scores, implicit_reward


@dataclass(frozen=True)
class Objective:
    """A loss bound to its settings: what the engine calls every micro-batch."""

    spec: LossSpec
    beta: float
    options: dict
    sft_weight: float = 0.0


def make_objective(spec: LossSpec, *, beta: float, options: dict, sft_weight: float = 0.0,
                   lookup: Callable[[str, str], LossSpec] | None = None) -> Objective:
    """Bind ``spec`` to its options once (``spec.bind``, e.g. ``weighted``'s terms)."""
    if spec.bind is not None:
        options = spec.bind(dict(options), lookup)
    return Objective(spec, beta, dict(options), sft_weight)


def check_fits(spec: LossSpec, plugin: Any, key: str = "loss.name") -> None:
    """What the loss needs against what the plugin declares (its score kind, the extra scores it
    fills, per-unit scores), once at start-up, with the fix."""
    name = plugin.name
    if spec.score_kinds is not None and plugin.score_kind not in spec.score_kinds:
        raise ConfigError(f"{key}: loss '{spec.name}' is defined on {' or '.join(spec.score_kinds)} "
                          f"scores and the '{name}' plugin's scores are {plugin.score_kind}. Choose "
                          f"another loss (`mmalign plugins` lists them).")
    missing = [e for e in spec.extras if e not in plugin.extra_scores()]
    if missing:
        raise ConfigError(f"{key}: loss '{spec.name}' needs the '{missing[0]}' score, which the "
                          f"'{name}' plugin does not compute with these settings"
                          f"{plugin.extra_hint(missing[0])}.")
    if spec.per_unit and not plugin.per_unit_scores:
        raise ConfigError(f"{key}: loss '{spec.name}' needs per-unit scores, which the '{name}' "
                          f"plugin does not provide.")


def loss_values(spec: LossSpec, pol: Scores, ref: Scores | None, *, beta: float, options: dict,
                values: dict[str, Tensor] | None = None) -> Tensor:
    """Per-context losses [C]: ``fn(policy, reference, beta=..., values=..., **options)`` for
    group losses (``values``: the batch source's per-response values, e.g. advantages),
    :func:`mmalign.losses.spec.call_loss` on the pair's columns otherwise."""
    if spec.responses == "group":
        return spec.fn(pol, ref, beta=beta, values=values or {}, **options)
    missing = [name for name in spec.extras if name not in pol.extras]
    if missing:  # e.g. KTO on records without labels
        raise ConfigError(f"loss '{spec.name}' needs the '{missing[0]}' score, which the plugin did not "
                          f"compute for this batch: see the loss's data requirements in docs/losses.md.")
    extras = {name: (pol.extras[name], ref.extras.get(name) if ref is not None else None)
              for name in spec.extras}
    return call_loss(spec, pol.chosen, pol.rejected, ref.chosen if ref is not None else None,
                     ref.rejected if ref is not None else None, beta=beta,
                     lengths=(pol.chosen_lengths, pol.rejected_lengths), options=options, extras=extras)


def objective_loss(obj: Objective, pol: Scores, ref: Scores | None,
                   values: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Scores -> (scalar loss, detached metrics). The loss is the mean over contexts of
    ``weights * loss_values`` (weights from the plugin, e.g. WPO's), plus ``sft_weight`` times
    the NLL of the first response."""
    losses = loss_values(obj.spec, pol, ref, beta=obj.beta, options=obj.options, values=values)
    if isinstance(losses, tuple):  # a group loss: (losses [C], its metrics: KL, clip fractions...)
        losses, loss_metrics = losses
        loss = losses.mean()
        return loss, {k: v.detach().float() for k, v in {"loss": loss, **loss_metrics}.items()}
    if pol.weights is not None:
        losses = losses * pol.weights
    loss = losses.mean()
    nll = nll_term(pol.chosen, pol.chosen_lengths).mean()
    if obj.sft_weight:
        loss = loss + obj.sft_weight * nll
    return loss, reward_metrics(pol, ref, obj.beta, loss=loss.detach(), nll=nll.detach())


def reward_metrics(pol: Scores, ref: Scores | None, beta: float, **metrics: Tensor) -> dict[str, Tensor]:
    """TRL's metric names: implicit rewards of chosen and rejected, their margin and accuracy."""
    with torch.no_grad():
        rewards = implicit_reward(pol.sums, ref.sums if ref is not None else None, beta)
        metrics.update({"logps/chosen": pol.chosen.mean(), "rewards/chosen": rewards[:, 0].mean()})
        if pol.k == 2:
            metrics.update({
                "rewards/rejected": rewards[:, 1].mean(),
                "rewards/margins": (rewards[:, 0] - rewards[:, 1]).mean(),
                "rewards/accuracies": (rewards[:, 0] > rewards[:, 1]).float().mean(),
                "logps/rejected": pol.rejected.mean(),
            })
    return {k: v.detach().float() for k, v in metrics.items()}


def preference_loss(spec: LossSpec, pol: Scores, ref: Scores | None, *, beta: float, options: dict,
                    sft_weight: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """One-off form of :func:`objective_loss` (binds the loss, then calls it): for tests and
    scripts; the engine binds once."""
    from mmalign.plugins import registry

    lookup = lambda name, where: registry().get("losses", name, where)  # noqa: E731
    obj = make_objective(spec, beta=beta, options=options, sft_weight=sft_weight, lookup=lookup)
    return objective_loss(obj, pol, ref)
