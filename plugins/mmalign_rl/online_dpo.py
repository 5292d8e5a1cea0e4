"""Online DPO: the policy samples its own preference pairs, the reward functions label them, and any
pair loss of the registry (DPO's ``sigmoid``, ``ipo``, ``hinge``, ...) trains on them.

Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", Alg. 1)
samples two responses y_1, y_2 ~ pi_theta(. | x) per prompt and lets the feedback pick the winner;
iterative DPO (Xiong et al. 2024, "Iterative Preference Learning from Human Feedback"; Dong et al.
2024, RLHFlow) samples k and pairs the best with the worst. With r the weighted sum of the scorers:

    y+ = argmax_j r(x, y_j),   y- = argmin_j r(x, y_j)         (k = 2: the better and the worse)
    L  = l(h),   h = log pi(y+|x) / pi_ref(y+|x) - log pi(y-|x) / pi_ref(y-|x)

with l the configured pair loss at ``loss.beta`` (DPO: l = -log sigmoid(beta * h), Rafailov et al.
2023, eq. 7). A prompt whose k rewards are all equal carries no preference and does not train (its
share is logged as ``pairs/ties``), as DAPO drops zero-variance groups.

The source is the online one (:class:`mmalign_rl.source.OnlineSource`): it hands the engine the k
sampled responses per prompt (Scores [C, k]) with the pair's indices in ``values``; the loss takes
the two columns (Scores [C, 2], chosen first) and calls the pair loss the one way pair losses are
called (:func:`mmalign.losses.objective.loss_values`). The protocol's sampled examples are opaque
to the source, so with k > 2 all k responses are scored and k - 2 of them do not train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from mmalign.algorithms import Algorithm
from mmalign.losses import LossSpec
from mmalign.losses.objective import loss_values, reward_metrics
from mmalign.scores import Scores
from mmalign.validation import fail
from mmalign_rl.algorithms import RolloutOptions, check_scorers
from mmalign_rl.reinforce import source_with

LOSS_KEY = "algorithm.options.loss"


@dataclass
class OnlineDPOOptions(RolloutOptions):
    """``algorithm.options`` of ``online_dpo``: two samples per prompt (Guo et al. 2024), DPO's loss."""

    samples_per_prompt: int = 2  # k: the best and the worst of k form the pair
    loss: str = "sigmoid"  # a pair loss of the registry that uses the reference
    loss_options: dict = field(default_factory=dict)  # that loss's own options (its loss.options)
    ratio_needs_old_scores: ClassVar[bool] = False  # a pair loss against the reference: no ratio

    def problem(self):
        return self.rollout_problem(2, "a preference pair needs two responses")


def preference_pairs(rewards: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each prompt's pair by reward (Guo et al. 2024 with k = 2; Xiong et al. 2024 best vs worst):
    chosen = argmax_j r_cj, rejected = argmin_j r_cj (the first index among equal rewards), and
    whether the pair carries a preference: max_j r_cj > min_j r_cj (False: every reward ties, the
    pair is one response twice). Shapes: rewards [C, k]; returns (chosen [C], rejected [C] long,
    keep [C] bool)."""
    return rewards.argmax(dim=1), rewards.argmin(dim=1), rewards.amax(dim=1) > rewards.amin(dim=1)


def pair_estimator(rewards: Tensor, rollout: Any = None) -> tuple[dict, dict]:
    """rewards [C, k] -> ({"chosen", "rejected", "keep", "rewards"}, metrics): the pairs and the
    scorer rewards of their two sides (ties count as a margin of 0)."""
    chosen, rejected, keep = preference_pairs(rewards)
    best, worst = rewards.gather(1, chosen[:, None])[:, 0], rewards.gather(1, rejected[:, None])[:, 0]
    values = {"chosen": chosen, "rejected": rejected, "keep": keep, "rewards": rewards}
    metrics = {"rewards/chosen": best.mean(), "rewards/rejected": worst.mean(),
               "rewards/margin": (best - worst).mean(), "pairs/ties": (~keep).float().mean()}
    return values, metrics


def pair_scores(scores: Scores, chosen: Tensor, rejected: Tensor) -> Scores:
    """Each context's (chosen, rejected) columns: Scores [C, k] -> Scores [C, 2], chosen first, as
    pair losses read it (``.chosen`` / ``.rejected``); per-context weights kept."""
    index = torch.stack([chosen, rejected], 1).to(scores.sums.device)
    return Scores(scores.sums.gather(1, index), scores.units.gather(1, index), weights=scores.weights)


def _rows(scores: Optional[Scores], rows: Tensor) -> Optional[Scores]:
    if scores is None:
        return None
    weights = scores.weights[rows] if scores.weights is not None else None
    return Scores(scores.sums[rows], scores.units[rows], weights=weights)


def pairs_loss(pair: LossSpec) -> LossSpec:
    """``pair`` as the group loss of sampled pairs: mean over the pairs that carry a preference."""
    def sampled_pairs(policy: Scores, reference: Optional[Scores], *, beta: float, values: dict,
                      loss_options: Optional[dict] = None) -> tuple[Tensor, dict]:
        """The pair loss on each prompt's (chosen, rejected) responses; tied prompts count 0 and the
        others C / (untied count), so the mean over C is the mean over the pairs that train.
        Metrics: the implicit rewards beta * log(pi / pi_ref) of every prompt's pair, as offline but
        named ``implicit_rewards/*`` (online, ``rewards/*`` are the scorers'); a tied prompt's pair
        is one response twice (margin 0, not counted accurate). The same keys in every micro-batch,
        as the cross-process mean of the metrics needs.
        Shapes: Scores [C, k]; values "chosen", "rejected" [C] long, "keep" [C] bool; returns [C]."""
        pol = pair_scores(policy, values["chosen"], values["rejected"])
        ref = pair_scores(reference, values["chosen"], values["rejected"]) if reference is not None else None
        implicit = reward_metrics(pol, ref, beta)
        metrics = {k.replace("rewards/", "implicit_rewards/"): v for k, v in implicit.items()}
        rows = values["keep"].nonzero().squeeze(1).to(pol.sums.device)
        contexts = pol.sums.shape[0]
        if rows.numel() == 0:  # no preference anywhere: a zero loss, still on the graph (DDP)
            return policy.sums.sum(1) * 0, metrics
        kept = _rows(pol, rows)
        losses = loss_values(pair, kept, _rows(ref, rows), beta=beta, options=loss_options or {})
        if kept.weights is not None:
            losses = losses * kept.weights
        per_context = losses.new_zeros(contexts).index_copy(0, rows, losses) * (contexts / rows.numel())
        return per_context, metrics

    def bind(options: dict, lookup) -> dict:  # the pair loss's own start-up binding (weighted's terms)
        inner = dict(options.get("loss_options") or {})
        return {"loss_options": pair.bind(inner, lookup) if pair.bind is not None else inner}

    return LossSpec(pair.name, sampled_pairs, needs_reference=pair.needs_reference, responses="group",
                    score_kinds=pair.score_kinds, summary=f"online DPO: {pair.summary}", bind=bind)


def pair_loss_problem(pair: LossSpec) -> Optional[str]:
    """Why ``pair`` cannot train on sampled pairs, or None."""
    if pair.responses != "pair":
        return f"a {pair.responses} loss; online DPO trains a pair loss on each prompt's (chosen, rejected) responses"
    if not pair.needs_reference:
        return "reference-free; online DPO trains against the reference (loss.beta, reference.*)"
    if pair.extras:
        return f"a loss that needs the '{pair.extras[0]}' score, which sampled responses do not have"
    return None


def online_dpo_loss(options: OnlineDPOOptions, registry: Any, where: str) -> LossSpec:
    """The configured pair loss (``algorithm.options.loss``, its options checked as ``loss.options``
    are) as the group loss of the sampled pairs."""
    from mmalign.run_validation import check_loss_options

    pair = registry.get("losses", options.loss, LOSS_KEY)
    problem = pair_loss_problem(pair)
    if problem:
        fits = [n for n in registry.names("losses") if pair_loss_problem(registry.get("losses", n)) is None]
        raise fail(where, LOSS_KEY, f"is '{options.loss}', which is {problem}. Choose one of: {', '.join(fits)}.")
    # beta 1: the losses' option checks (label_smoothing's range, weighted's terms) do not depend on it
    check_loss_options(pair, options.loss_options, 1.0, where, prefix="algorithm.options.loss_options")
    return pairs_loss(pair)


ONLINE_DPO = Algorithm("online_dpo", online_dpo_loss, OnlineDPOOptions, source_with(pair_estimator),
                       "online / iterative DPO (Guo et al. 2024; Xiong et al. 2024): best vs worst of k "
                       "samples, labelled by the scorers, any pair loss", check_scorers, needs_beta=True)
ALGORITHMS = (ONLINE_DPO,)
