"""The group-baseline family of online algorithms: GRPO, Dr. GRPO, DAPO, GSPO and RLOO.

Each is the same online source (sample G responses per prompt, score them) with its own
advantage estimator and options; all train the one group loss below (PPO-clip per token with an
optional KL to the reference), differing in its options: the clip range, the importance ratio
(token or sequence) and how per-token losses are aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal, Optional

import torch
from torch import Tensor

from mmalign.algorithms import Algorithm
from mmalign.losses import LossSpec
from mmalign.scores import Scores
from mmalign_rl.advantages import dapo_keep_groups, group_advantages, rloo_advantages
from mmalign_rl.policy_losses import aggregate, clipped_surrogate, gspo_loss, kl_k1, kl_k2, kl_k3, masked_mean
from mmalign_rl.source import OnlineSource, build_scorers

KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


@dataclass
class RolloutOptions:
    """``algorithm.options`` every online algorithm has: how it samples and what scores the samples."""

    samples_per_prompt: int = 8  # G responses per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    scorers: dict = field(default_factory=dict)  # {name: weight} or {name: {weight: w, <option>: v}}
    #: the modality plugin's own sampling options, checked by its ``sampling_options`` (diffusion:
    #: num_inference_steps, eta, guidance_scale, timestep_fraction, score); token plugins take none
    sampling: dict = field(default_factory=dict)
    rollout_steps: int = 1  # optimizer steps' worth of prompts sampled at once (TRL: steps_per_generation)
    epochs: int = 1  # passes over each rollout (PPO's ppo_epochs; TRL GRPO's num_iterations)
    #: the loss's importance ratio divides by the sampling policy's per-unit log-probs, which a
    #: rollout trained for more than one step must keep (``old_unit_scores``)
    ratio_needs_old_scores: ClassVar[bool] = True
    #: what the algorithm asks of the plugin beyond sampling and scoring ("greedy": a greedy
    #: response per prompt; "value_model": a critic), so a plugin without it refuses the config
    needs: ClassVar[tuple[str, ...]] = ()

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps each rollout trains; checkpoints fall between rollouts."""
        return self.rollout_steps * self.epochs

    def rollout_problem(self, min_samples: int, why: str):
        if self.rollout_steps < 1 or self.epochs < 1:
            return "algorithm.options.rollout_steps", "rollout_steps and epochs must be at least 1."
        if self.samples_per_prompt < min_samples:
            return "algorithm.options.samples_per_prompt", f"must be at least {min_samples} ({why})."
        if self.max_new_tokens < 1:
            return "algorithm.options.max_new_tokens", "must be at least 1."
        if not self.temperature > 0:
            return "algorithm.options.temperature", "must be positive."
        if not 0 < self.top_p <= 1:
            return "algorithm.options.top_p", "must be in (0, 1]."
        if not self.scorers:
            return "algorithm.options.scorers", "names no reward function, e.g. {sentiment: 1.0}."
        return None


def clip_range_problem(epsilon: float, epsilon_high: Optional[float]):
    """(key, message) when the PPO clip range is out of range, else None."""
    if not 0 < epsilon < 1 or (epsilon_high is not None and not epsilon_high > 0):
        return "algorithm.options.epsilon", "must be in (0, 1) (and epsilon_high positive)."
    return None


@dataclass
class GroupOptions(RolloutOptions):
    """``algorithm.options`` of the group family (defaults: GRPO as in TRL 1.16)."""

    scale_rewards: Literal["group", "batch", "none"] = "group"  # std the advantages are divided by
    epsilon: float = 0.2  # clip range below 1 (and above, unless epsilon_high)
    epsilon_high: Optional[float] = None  # DAPO's clip-higher
    importance_sampling: Literal["token", "sequence"] = "token"  # sequence: GSPO
    loss_aggregation: Literal["sequence_mean", "token_mean", "constant_norm"] = "sequence_mean"
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    dynamic_sampling: bool = False  # DAPO: groups whose rewards are all equal do not train
    baseline: Literal["group_mean", "leave_one_out"] = "group_mean"  # leave_one_out: RLOO

    def problem(self):
        problem = self.rollout_problem(2, "a group baseline needs two responses")
        return problem or clip_range_problem(self.epsilon, self.epsilon_high)


def group_policy_loss(policy: Scores, reference: Optional[Scores], *, beta: float, values: dict,
                      epsilon: float = 0.2, epsilon_high: Optional[float] = None,
                      importance_sampling: str = "token", loss_aggregation: str = "sequence_mean",
                      kl_estimator: str = "k3", max_new_tokens: int = 64) -> tuple[Tensor, dict]:
    """The group family's loss (GRPO, Shao et al. 2024, eq. 3; DAPO, Yu et al. 2025; GSPO, Zheng
    et al. 2025), per token t of response i of context c:

        L_cit = -min(rho * A_ci, clip(rho, 1 - eps, 1 + eps_high) * A_ci) + beta * KL_t
        rho   = pi(y_t) / pi_old(y_t) (token) or s_ci (sequence, GSPO)
        KL_t  = k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman 2020), 0 without a reference

    aggregated per context by ``loss_aggregation`` (mmalign_rl.policy_losses.aggregate). pi_old is
    the policy that sampled: one update per rollout, so logp detached (rho = 1, the gradient is
    -A * grad logp). ``values``: "advantages" [C, G] and, with DAPO's dynamic sampling, "keep" [C].
    Shapes: Scores [C, G] with unit_scores / unit_mask [C, G, U]; returns ([C], metrics).
    """
    logp, mask = policy.unit_scores, policy.unit_mask.to(policy.unit_scores.dtype)
    if "keep" in values:  # DAPO: groups with equal rewards carry no signal and do not count
        mask = mask * values["keep"].to(mask.dtype)[:, None, None]
    old = values.get("old_unit_scores", logp.detach())
    high = epsilon if epsilon_high is None else epsilon_high
    if importance_sampling == "sequence":
        per_token, metrics = gspo_loss(logp, old, values["advantages"], mask, eps_low=epsilon, eps_high=high)
    else:
        per_token, metrics = clipped_surrogate(logp, old, values["advantages"], mask, eps_low=epsilon, eps_high=high)
    if reference is not None and beta:
        kl = KL_ESTIMATORS[kl_estimator](logp, reference.unit_scores)
        per_token = per_token + beta * kl * mask
        metrics["kl"] = masked_mean(kl.detach(), mask)
    return aggregate(per_token, mask, loss_aggregation, max_length=max_new_tokens), metrics


GROUP_LOSS = LossSpec("group_policy", group_policy_loss, needs_reference=True, responses="group", per_unit=True,
                      summary="PPO-clip per token with a group baseline and k3 KL (GRPO family)",
                      # per token, the clipped term and the KL need that token's log-prob only; GSPO's
                      # sequence ratio needs all of them
                      unit_separable=lambda options: options.get("importance_sampling", "token") == "token")


def advantage_estimator(options: GroupOptions):
    """rewards [C, G] -> ({"advantages", "rewards"[, "keep"]}, metrics); the rollout is unused."""
    def estimate(rewards: Tensor, rollout=None) -> tuple[dict, dict]:
        if options.baseline == "leave_one_out":
            advantages = rloo_advantages(rewards)
        else:
            advantages = group_advantages(rewards, scale=options.scale_rewards)
        values = {"advantages": advantages, "rewards": rewards}
        metrics = {"advantages/abs_mean": advantages.abs().mean()}
        if options.dynamic_sampling:
            values["keep"] = dapo_keep_groups(rewards)
            metrics["groups/kept"] = values["keep"].float().mean()
        return values, metrics

    return estimate


def make_source(ctx) -> OnlineSource:
    generator = torch.Generator().manual_seed(ctx.seed * 1009 + ctx.rank)  # each process samples its own
    return OnlineSource(ctx, advantage_estimator(ctx.options), build_scorers(ctx.options.scorers, ctx.registry),
                        generator)


def check_scorers(options: GroupOptions, registry) -> None:
    """Every reward function named in ``algorithm.options.scorers`` is registered."""
    for name in options.scorers:
        registry.entry("scorers", name, f"algorithm.options.scorers.{name}")


def _options(name: str, **defaults) -> type:
    """GroupOptions with other defaults (each algorithm's paper settings)."""
    types = {f.name: f.type for f in fields(GroupOptions)}
    annotations = {k: types[k] for k in defaults}
    return dataclass(type(f"{name}Options", (GroupOptions,),
                          {"__annotations__": annotations, "__module__": __name__, **defaults}))


GRPO = Algorithm("grpo", GROUP_LOSS, GroupOptions, make_source,
                 "GRPO (Shao et al. 2024): group-normalised advantages, PPO-clip, k3 KL", check_scorers)
DR_GRPO = Algorithm("dr_grpo", GROUP_LOSS, _options("DrGRPO", scale_rewards="none", loss_aggregation="constant_norm"),
                    make_source, "Dr. GRPO (Liu et al. 2025): no std scaling, constant length normaliser",
                    check_scorers)
DAPO = Algorithm("dapo", GROUP_LOSS, _options("DAPO", epsilon_high=0.28, loss_aggregation="token_mean",
                                              dynamic_sampling=True),
                 make_source, "DAPO (Yu et al. 2025): clip-higher, token-level loss, dynamic sampling",
                 check_scorers)
GSPO = Algorithm("gspo", GROUP_LOSS, _options("GSPO", epsilon=3e-4, epsilon_high=4e-4, importance_sampling="sequence"),
                 make_source, "GSPO (Zheng et al. 2025): sequence-level importance ratio", check_scorers)
RLOO = Algorithm("rloo", GROUP_LOSS, _options("RLOO", baseline="leave_one_out", scale_rewards="none"),
                 make_source, "RLOO (Ahmadian et al. 2024): leave-one-out baseline", check_scorers)
ALGORITHMS = (GRPO, DR_GRPO, DAPO, GSPO, RLOO)
