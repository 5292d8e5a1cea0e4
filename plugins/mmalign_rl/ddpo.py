"""DDPO (Black et al. 2023, "Training Diffusion Models with Reinforcement Learning", DDPO_IS):
PPO-clip over the denoising steps of sampled images, advantages normalised per prompt over the
rewards that prompt has had recently, no critic and no KL.

It trains the group family's loss (mmalign_rl.algorithms.group_policy_loss: the clipped surrogate
per unit, here per denoising step, with the per-step KL to the reference when ``loss.beta`` > 0)
on the plugin's per-unit scores; what is its own is the advantage (DDPO's per-prompt stat
tracking, :func:`per_prompt_advantages`), clipped to [-advantage_clip, advantage_clip], and its
defaults: clip range 1e-4 and the mean over every trained step of the batch. The tracker's
history is part of the batch source's state, saved in every checkpoint, so ``--resume`` continues
exactly. Any plugin with per-unit scores trains with it; the diffusion plugin's units are the
denoising steps of its DDIM trajectories (``algorithm.options.sampling``, docs/online.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from mmalign.algorithms import Algorithm
from mmalign_rl.algorithms import GROUP_LOSS, RolloutOptions, check_scorers, clip_range_problem
from mmalign_rl.source import OnlineSource, build_scorers


@dataclass
class DDPOOptions(RolloutOptions):
    """``algorithm.options`` of ``ddpo`` (defaults: DDPO's config/base.py)."""

    samples_per_prompt: int = 4  # images per prompt and step (DDPO samples prompts independently)
    stat_buffer: int = 16  # rewards kept per prompt (DDPO's per_prompt_stat_tracking.buffer_size); 0: off
    stat_min_count: int = 16  # below this many, the whole micro-batch's statistics are used
    advantage_clip: float = 5.0  # DDPO's adv_clip_max
    epsilon: float = 1e-4  # DDPO's clip_range
    epsilon_high: Optional[float] = None
    importance_sampling: Literal["token", "sequence"] = "token"  # token: one ratio per step
    loss_aggregation: Literal["sequence_mean", "token_mean", "constant_norm"] = "token_mean"
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # the per-step KL, with loss.beta > 0

    def problem(self):
        if self.stat_buffer < 0 or self.stat_min_count < 1:
            return "algorithm.options.stat_buffer", "stat_buffer must be >= 0 (0: off) and stat_min_count >= 1."
        if not self.advantage_clip > 0:
            return "algorithm.options.advantage_clip", "must be positive."
        minimum = 1 if self.stat_buffer else 2
        problem = self.rollout_problem(minimum, "without stat tracking the baseline is the group's mean")
        return problem or clip_range_problem(self.epsilon, self.epsilon_high)


def per_prompt_advantages(rewards: Tensor, prompts: list[str], history: dict, *, buffer: int,
                          min_count: int) -> Tensor:
    """DDPO's per-prompt stat tracking (Black et al. 2023, appendix; ``PerPromptStatTracker``):
    every prompt's rewards join its history (the last ``buffer`` rewards), and

        A_i = (r_i - mean_p) / (std_p + 1e-6)

    with mean_p, std_p (population std) over prompt p's history when it holds at least
    ``min_count`` rewards, else over all rewards of this call. ``history`` ({prompt: deque}) is
    updated in place. ``buffer`` 0: no history, mean and std over each prompt's own rewards of this
    call (GRPO's group baseline with DDPO's std). Shapes: rewards [C, G] (row c: prompts[c]);
    returns [C, G]."""
    flat = rewards.double()
    advantages = torch.empty_like(flat)
    for prompt in dict.fromkeys(prompts):
        rows = [c for c, p in enumerate(prompts) if p == prompt]
        own = flat[rows].flatten()
        if buffer:
            seen = history.setdefault(prompt, deque(maxlen=buffer))
            seen.extend(own.tolist())
            pool = torch.tensor(list(seen), dtype=torch.float64) if len(seen) >= min_count else flat.flatten()
        else:
            pool = own
        advantages[rows] = (flat[rows] - pool.mean()) / (pool.std(unbiased=False) + 1e-6)
    return advantages.to(rewards.dtype)


def ddpo_estimator(rewards: Tensor, rollout: Any) -> tuple[dict, dict]:
    """rewards [C, G] -> ({"advantages", "rewards"}, metrics): per-prompt normalised, clipped."""
    source, options = rollout.source, rollout.source.ctx.options
    prompts = [str(r.fields["prompt"]) for r in rollout.records]
    advantages = per_prompt_advantages(rewards, prompts, source.stats, buffer=options.stat_buffer,
                                       min_count=options.stat_min_count)
    advantages = advantages.clamp(-options.advantage_clip, options.advantage_clip)
    return {"advantages": advantages, "rewards": rewards}, {"advantages/abs_mean": advantages.abs().mean()}


@dataclass
class DDPOSource(OnlineSource):
    """The online source with DDPO's per-prompt reward history, saved with every checkpoint."""

    stats: dict = field(default_factory=dict)  # prompt -> deque of its last stat_buffer rewards

    def source_state(self) -> tuple[dict, dict]:
        """The history as float64 tensors (every reward exactly), the prompts in the trainer state."""
        if not self.stats:
            return {}, {}
        rewards = torch.tensor([r for seen in self.stats.values() for r in seen], dtype=torch.float64)
        counts = torch.tensor([len(seen) for seen in self.stats.values()])
        return {"ddpo.rewards": rewards, "ddpo.counts": counts}, {"ddpo_prompts": list(self.stats)}

    def load_source_state(self, tensors: dict, meta: dict) -> None:
        if "ddpo.rewards" not in tensors:
            return
        groups = tensors["ddpo.rewards"].split(tensors["ddpo.counts"].tolist())
        self.stats = {p: deque(g.tolist(), maxlen=self.ctx.options.stat_buffer)
                      for p, g in zip(meta["ddpo_prompts"], groups)}


def make_ddpo_source(ctx) -> DDPOSource:
    if ctx.world > 1 and ctx.options.stat_buffer:
        from mmalign.errors import ConfigError

        raise ConfigError("algorithm.options.stat_buffer: DDPO's per-prompt history is kept by one process "
                          "(each would track its own prompts, and only the main one's is saved); with several "
                          "processes set stat_buffer: 0 (each prompt's group normalised on its own).")
    generator = torch.Generator().manual_seed(ctx.seed * 1009 + ctx.rank)
    return DDPOSource(ctx, ddpo_estimator, build_scorers(ctx.options.scorers, ctx.registry), generator)


DDPO = Algorithm("ddpo", GROUP_LOSS, DDPOOptions, make_ddpo_source,
                 "DDPO (Black et al. 2023): per-prompt normalised advantages, PPO-clip per unit, no critic",
                 check_scorers)
ALGORITHMS = (DDPO,)
