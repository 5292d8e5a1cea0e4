"""PPO for RLHF (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT step 3):
a value model (critic), the KL to the reference in the per-token reward, GAE, whitened advantages,
the clipped surrogate per token, and a clipped value loss, several epochs over each rollout.

Per micro-batch of the rollout (no gradient), for response tokens t of response i:

    r_t   = -beta * KL_t + 1[t = last] * R(x, y)        (mmalign_rl.advantages.kl_in_reward)
    A, G  = GAE(r, V_old; gamma, lambda)                 (mmalign_rl.advantages.gae)
    A     = whiten(A) over the micro-batch's tokens     (mmalign_rl.advantages.whiten)

then each of ``epochs`` passes trains the policy on the clipped surrogate (the REINFORCE++ token
loss: mmalign_rl.reinforce.token_policy_loss, pi_old = the sampling policy) and the critic on

    L_V = 0.5 * max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2)   (policy_losses.value_loss)

The critic belongs to the batch source: it is trained when the source hands out a micro-batch
(its own optimizer, stepped every ``gradient_accumulation_steps`` micro-batches; with several
processes accelerate wraps it in DDP, which averages its gradients) and saved in the run's
checkpoints (``source.safetensors``), so the engine loop is the same as for every algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
from torch import Tensor

from mmalign.algorithms import Algorithm
from mmalign.batches import Batch
from mmalign_rl.advantages import gae, kl_in_reward, whiten
from mmalign_rl.algorithms import KL_ESTIMATORS, RolloutOptions, check_scorers, clip_range_problem
from mmalign_rl.policy_losses import explained_variance, masked_mean, value_loss
from mmalign_rl.reinforce import TOKEN_LOSS
from mmalign_rl.source import OnlineSource, Rollout, build_scorers
from mmalign_runs.optimizer_state import load_optimizer, optimizer_tensors


@dataclass
class PPOOptions(RolloutOptions):
    """``algorithm.options`` of PPO (defaults: TRL's former PPOTrainer / "The N implementation
    details of RLHF with PPO", Huang et al. 2024)."""

    needs: ClassVar[tuple[str, ...]] = ("value_model",)

    samples_per_prompt: int = 1
    epochs: int = 4  # ppo_epochs: passes over each rollout
    epsilon: float = 0.2  # policy clip range
    epsilon_high: Optional[float] = None
    value_model: Optional[str] = None  # a reward model or checkpoint to start the critic from; none: the policy
    value_lr: float = 1e-5  # the critic's AdamW learning rate
    value_clip: float = 0.2  # c in the clipped value loss
    value_max_grad_norm: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # in the per-token reward
    loss_aggregation: Literal["sequence_mean", "token_mean", "constant_norm"] = "token_mean"

    def problem(self):
        problem = self.rollout_problem(1, "one response per prompt at least")
        if problem or (problem := clip_range_problem(self.epsilon, self.epsilon_high)):
            return problem
        if not self.value_lr > 0 or not self.value_clip > 0 or not self.value_max_grad_norm > 0:
            return "algorithm.options.value_lr", "value_lr, value_clip and value_max_grad_norm must be positive."
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            return "algorithm.options.gamma", "gamma and lam must be in [0, 1]."
        return None


@dataclass
class PPOSource(OnlineSource):
    """The online source with a critic (see the module docstring)."""

    critic: torch.nn.Module = None
    critic_optimizer: torch.optim.Optimizer = None
    micro_batches: int = 0  # handed out so far: the critic steps every ``accumulation``

    def next_batch(self, plugin, device) -> Batch:
        batch = super().next_batch(plugin, device)
        metrics = train_critic(self, plugin, batch)
        return Batch(batch.data, batch.index, batch.values, {**batch.metrics, **metrics})

    def source_state(self) -> tuple[dict, dict]:
        tensors, meta = optimizer_tensors(self.critic_optimizer)
        weights = {f"critic.{k}": v for k, v in unwrap_ddp(self.critic).state_dict().items()}
        return {**weights, **{f"optimizer.{k}": v for k, v in tensors.items()}}, {"critic_optimizer": meta}

    def load_source_state(self, tensors: dict, meta: dict) -> None:
        unwrap_ddp(self.critic).load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("critic.")})
        load_optimizer(self.critic_optimizer, {k[10:]: v for k, v in tensors.items()
                                                    if k.startswith("optimizer.")}, meta["critic_optimizer"])


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def ppo_estimator(rewards: Tensor, rollout: Rollout) -> tuple[dict, dict]:
    """Per-token advantages and returns of one micro-batch (module docstring). Shapes: rewards
    [C, G]; values "advantages", "returns", "old_values", "old_unit_scores" [C, G, U], "rewards" [C, G]."""
    source, ctx = rollout.source, rollout.source.ctx
    options = ctx.options
    policy = rollout.policy_scores()
    logp, mask = policy.unit_scores.float(), policy.unit_mask
    with torch.no_grad():
        if ctx.reference is not None and ctx.beta:
            reference = ctx.reference.scores(Batch(rollout.data), per_unit=True).unit_scores.float()
            kl = KL_ESTIMATORS[options.kl_estimator](logp, reference)
        else:
            kl = torch.zeros_like(logp)
        with ctx.autocast():
            old_values = rollout.plugin.unit_values(source.critic, rollout.data).float()
        token_rewards = kl_in_reward(rewards.to(logp.device), kl, mask, ctx.beta)
        advantages, returns = gae(token_rewards, old_values, mask, gamma=options.gamma, lam=options.lam)
        if options.whiten_advantages:
            advantages = whiten(advantages, mask)
    values = {"advantages": advantages, "returns": returns, "old_values": old_values * mask,
              "old_unit_scores": logp.detach(), "unit_mask": mask, "rewards": rewards}
    return values, {"kl": masked_mean(kl, mask), "advantages/abs_mean": masked_mean(advantages.abs(), mask),
                    "values/mean": masked_mean(old_values, mask)}


def train_critic(source: PPOSource, plugin, batch: Batch) -> dict[str, Tensor]:
    """One micro-batch of the critic's clipped value loss; an optimizer step every
    ``accumulation`` micro-batches. Returns value_loss, value_clip and explained_variance."""
    options, values = source.ctx.options, batch.values
    with source.ctx.autocast():
        predicted = plugin.unit_values(source.critic, batch.data).float()
    mask = values["unit_mask"].to(predicted.dtype)
    loss, clipped = value_loss(predicted, values["old_values"], values["returns"], mask, clip=options.value_clip)
    (loss / source.accumulation).backward()
    source.micro_batches += 1
    if source.micro_batches % source.accumulation == 0:
        torch.nn.utils.clip_grad_norm_(source.critic.parameters(), options.value_max_grad_norm)
        source.critic_optimizer.step()
        source.critic_optimizer.zero_grad(set_to_none=True)
    return {"value_loss": loss.detach(), "value_clip": clipped,
            "values/explained_variance": explained_variance(predicted, values["returns"], mask)}


def make_source(ctx) -> PPOSource:
    """The PPO source: its critic on the run's device, with its own AdamW."""
    critic = ctx.plugin.load_value_model(ctx.policy, ctx.options.value_model).to(ctx.device)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=ctx.options.value_lr)
    critic = ctx.prepare_model(critic)  # several processes: DDP averages the critic's gradients
    generator = torch.Generator().manual_seed(ctx.seed * 1009 + ctx.rank)
    return PPOSource(ctx, ppo_estimator, build_scorers(ctx.options.scorers, ctx.registry), generator,
                     critic=critic, critic_optimizer=optimizer)


PPO = Algorithm("ppo", TOKEN_LOSS, PPOOptions, make_source,
                "PPO (Schulman et al. 2017; InstructGPT): a critic, GAE, KL in the reward, PPO-clip, "
                "several epochs per rollout", check_scorers, source_needs_reference=True)
ALGORITHMS = (PPO,)
