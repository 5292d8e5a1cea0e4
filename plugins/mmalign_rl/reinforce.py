"""REINFORCE-style online algorithms without a value model: ReMax and REINFORCE++.

- ``remax`` (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning
  Method for Aligning LLMs"): the baseline of a sampled response is the reward of the policy's
  greedy response to the same prompt, A = r(x, y_sampled) - r(x, y_greedy). The source decodes
  one greedy response per prompt (``plugin.sample(..., temperature=0)``, no gradient) and scores
  it with the same reward functions. Trained with the group loss (ratio 1: REINFORCE), mean over
  the batch's tokens, the KL to the reference as a loss term (``loss.beta``, k3).
- ``reinforce_pp`` (REINFORCE++, Hu 2025; as OpenRLHF's ``advantage_estimator: reinforce``): the
  KL to the reference goes into the per-token reward (k1 by default, coefficient ``loss.beta``),
  the return at each token is the sum of the rewards after it (the sequence reward at the last
  token), normalised over all tokens of the micro-batch: token-level advantages [C, G, U]. The
  loss is PPO-clip per token (eps 0.2; one update per rollout, so the ratio is 1) with no KL term.
  The source scores the sampled responses with the policy and the reference (no gradient) before
  computing the advantages; the engine does no reference pass of its own (the loss declares
  ``needs_reference=False``, the algorithm ``source_needs_reference=True``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
from torch import Tensor

from mmalign.algorithms import Algorithm
from mmalign.batches import Batch
from mmalign.losses import LossSpec
from mmalign.scores import Scores
from mmalign_rl.advantages import reinforce_pp_advantages, remax_advantages
from mmalign_rl.algorithms import GROUP_LOSS, KL_ESTIMATORS, RolloutOptions, check_scorers, clip_range_problem
from mmalign_rl.policy_losses import aggregate, clipped_surrogate, masked_mean
from mmalign_rl.source import OnlineSource, Rollout, build_scorers, score_responses


@dataclass
class ReMaxOptions(RolloutOptions):
    """``algorithm.options`` of ``remax``: one sample per prompt (the paper), token-mean loss."""

    needs: ClassVar[tuple[str, ...]] = ("greedy",)

    samples_per_prompt: int = 1
    loss_aggregation: Literal["sequence_mean", "token_mean", "constant_norm"] = "token_mean"
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"

    def problem(self):
        return self.rollout_problem(1, "the greedy response is the baseline, one sample suffices")


@dataclass
class ReinforcePPOptions(RolloutOptions):
    """``algorithm.options`` of ``reinforce_pp`` (OpenRLHF's defaults: one sample per prompt, k1 KL
    in the reward, clip 0.2, token-level loss)."""

    samples_per_prompt: int = 1
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None
    loss_aggregation: Literal["sequence_mean", "token_mean", "constant_norm"] = "token_mean"
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"

    def problem(self):
        problem = self.rollout_problem(1, "one response per prompt at least")
        return problem or clip_range_problem(self.epsilon, self.epsilon_high)


def remax_estimator(rewards: Tensor, rollout: Rollout) -> tuple[dict, dict]:
    """ReMax (Li et al. 2023, eq. 6): decode each prompt's greedy response with the policy (no
    gradient), score it, and use its reward as the baseline: A_cg = r_cg - r_c(greedy).
    Shapes: rewards [C, G]; values "advantages", "rewards" [C, G], "greedy_rewards" [C]."""
    source, options = rollout.source, rollout.source.ctx.options
    start = time.perf_counter()
    with torch.no_grad():
        greedy = rollout.plugin.sample(source.ctx.policy, rollout.records, 1, rollout.generator,
                                       max_new_tokens=options.max_new_tokens, temperature=0, top_p=1.0)
    greedy_rewards = score_responses(source.scorers, rollout.records, greedy.responses)[0][:, 0]
    advantages = remax_advantages(rewards, greedy_rewards)
    values = {"advantages": advantages, "rewards": rewards, "greedy_rewards": greedy_rewards}
    return values, {"rewards/greedy": greedy_rewards.mean(), "advantages/abs_mean": advantages.abs().mean(),
                    "time/greedy": torch.tensor(time.perf_counter() - start)}


def reinforce_pp_estimator(rewards: Tensor, rollout: Rollout) -> tuple[dict, dict]:
    """REINFORCE++ (Hu 2025, eqs. 6-7): the policy's and the reference's per-token log-probs of the
    sampled responses (no gradient; no reference when ``loss.beta`` is 0: no KL), the KL estimate
    per token into the reward, returns normalised over the micro-batch's tokens
    (:func:`mmalign_rl.advantages.reinforce_pp_advantages`). Shapes: rewards [C, G];
    values "advantages" [C, G, U] (the plugin's unit_scores layout, 0 on padding), "rewards" [C, G]."""
    ctx = rollout.source.ctx
    with torch.no_grad():
        with ctx.autocast():
            policy = rollout.plugin.score(ctx.policy, rollout.data, per_unit=True)
        logp, mask = policy.unit_scores.float(), policy.unit_mask
        if ctx.reference is not None and ctx.beta:
            reference = ctx.reference.scores(Batch(rollout.data), per_unit=True).unit_scores.float()
            kl = KL_ESTIMATORS[ctx.options.kl_estimator](logp, reference)
        else:
            kl = torch.zeros_like(logp)
        advantages = reinforce_pp_advantages(rewards.to(logp.device), kl, mask, beta=ctx.beta)
    values = {"advantages": advantages, "rewards": rewards}
    return values, {"kl": masked_mean(kl, mask), "advantages/abs_mean": masked_mean(advantages.abs(), mask)}


def token_policy_loss(policy: Scores, reference: Optional[Scores], *, beta: float, values: dict,
                      epsilon: float = 0.2, epsilon_high: Optional[float] = None,
                      loss_aggregation: str = "token_mean", max_new_tokens: int = 64) -> tuple[Tensor, dict]:
    """PPO-clip per token on token-level advantages, no KL term (REINFORCE++ has the KL in the
    reward; ``beta`` is unused here):

        L_cgt = -min(rho_t * A_cgt, clip(rho_t, 1 - eps, 1 + eps_high) * A_cgt),  rho_t = pi / pi_old

    aggregated per context by ``loss_aggregation``. pi_old = the policy detached unless ``values``
    holds "old_unit_scores" (one update per rollout: rho = 1). Shapes: Scores [C, G] with
    unit_scores / unit_mask [C, G, U]; values "advantages" [C, G, U] (or [C, G]); returns ([C], metrics).
    """
    logp, mask = policy.unit_scores, policy.unit_mask.to(policy.unit_scores.dtype)
    old = values.get("old_unit_scores", logp.detach())
    high = epsilon if epsilon_high is None else epsilon_high
    per_token, metrics = clipped_surrogate(logp, old, values["advantages"], mask, eps_low=epsilon, eps_high=high)
    return aggregate(per_token, mask, loss_aggregation, max_length=max_new_tokens), metrics


TOKEN_LOSS = LossSpec("token_policy", token_policy_loss, needs_reference=False, responses="group", per_unit=True,
                      summary="PPO-clip per token on token-level advantages, KL in the reward (REINFORCE++)")


def source_with(estimator):
    """``make_source`` for an algorithm whose estimator reads the rollout."""
    def make_source(ctx) -> OnlineSource:
        generator = torch.Generator().manual_seed(ctx.seed * 1009 + ctx.rank)
        return OnlineSource(ctx, estimator, build_scorers(ctx.options.scorers, ctx.registry), generator)

    return make_source


REMAX = Algorithm("remax", GROUP_LOSS, ReMaxOptions, source_with(remax_estimator),
                  "ReMax (Li et al. 2023): the greedy response's reward as the baseline, REINFORCE",
                  check_scorers)
REINFORCE_PP = Algorithm("reinforce_pp", TOKEN_LOSS, ReinforcePPOptions, source_with(reinforce_pp_estimator),
                         "REINFORCE++ (Hu 2025): KL in the reward, batch-normalised token-level returns, "
                         "PPO-clip", check_scorers, source_needs_reference=True)
ALGORITHMS = (REMAX, REINFORCE_PP)
