"""PPO: the estimator's per-token advantages on hand-computed values (KL in the reward, GAE over
the critic's values), the critic trained beside the policy and saved in checkpoints (a resumed
run continues exactly), and checkpoints only between rollouts."""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from test_online import assert_resume_continues_exactly, config  # noqa: F401
from test_online import scorers  # noqa: F401  (autouse: registers the test scorers)

import mmalign
from mmalign.errors import ConfigError
from mmalign.scores import Scores
from mmalign_rl.ppo import PPOOptions, ppo_estimator


class FakeReference:
    def __init__(self, unit_scores):
        self.unit_scores = unit_scores

    def scores(self, batch, per_unit):
        return SimpleNamespace(unit_scores=self.unit_scores)


def hand_rollout(beta, logp, ref, old_values, mask, **options):
    ctx = SimpleNamespace(options=PPOOptions(**options), beta=beta, reference=FakeReference(ref),
                          autocast=nullcontext)
    plugin = SimpleNamespace(unit_values=lambda critic, data: old_values)
    scores = Scores(logp.sum(-1), mask.sum(-1), unit_scores=logp, unit_mask=mask)
    return SimpleNamespace(source=SimpleNamespace(ctx=ctx, critic=None), plugin=plugin, data=None,
                           policy_scores=lambda: scores)


def test_ppo_advantages_by_hand():
    """One response of 3 tokens (a 4th padded), R = 1, beta 0.5, k1 KL = logp - ref = (0.2, -0.2, 0.4),
    V_old = (0.1, 0.3, 0.5), gamma 1, lambda 0.5, no whitening:
        r = (-0.1, 0.1, -0.2 + 1) = (-0.1, 0.1, 0.8)
        delta_3 = 0.8 - 0.5 = 0.3;   delta_2 = 0.1 + 0.5 - 0.3 = 0.3;   delta_1 = -0.1 + 0.3 - 0.1 = 0.1
        A_3 = 0.3;   A_2 = 0.3 + 0.5 * 0.3 = 0.45;   A_1 = 0.1 + 0.5 * 0.45 = 0.325
        returns = A + V = (0.425, 0.75, 0.8)"""
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    logp = torch.tensor([[[-1.0, -2.0, -0.5, 0.0]]])
    ref = logp - torch.tensor([[[0.2, -0.2, 0.4, 0.0]]])
    old_values = torch.tensor([[[0.1, 0.3, 0.5, 0.0]]])
    rollout = hand_rollout(0.5, logp, ref, old_values, mask, gamma=1.0, lam=0.5, whiten_advantages=False)
    values, metrics = ppo_estimator(torch.tensor([[1.0]]), rollout)
    assert values["advantages"][0, 0].tolist() == pytest.approx([0.325, 0.45, 0.3, 0.0])
    assert values["returns"][0, 0].tolist() == pytest.approx([0.425, 0.75, 0.8, 0.0])
    assert torch.equal(values["old_unit_scores"], logp) and torch.equal(values["old_values"], old_values)
    assert metrics["kl"].item() == pytest.approx(0.4 / 3)


def test_whitened_advantages_have_zero_mean_and_unit_variance_over_tokens():
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]])
    logp = -torch.rand(1, 2, 4)
    rollout = hand_rollout(0.1, logp, logp - 0.1, torch.zeros(1, 2, 4), mask)
    advantages = ppo_estimator(torch.tensor([[1.0, -1.0]]), rollout)[0]["advantages"]
    real = advantages[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6) and real.std().item() == pytest.approx(1.0, abs=1e-4)
    assert advantages[~mask.bool()].abs().sum() == 0


def test_checkpoints_fall_between_rollouts(tmp_path):
    cfg = config(tmp_path, "ppo", samples_per_prompt=1, epochs=4)  # save_every 2
    with pytest.raises(ConfigError, match="train.save_every.*multiple of 4"):
        mmalign.train(cfg, log=lambda *a: None)
    with pytest.raises(ConfigError, match="algorithm.options.gamma"):
        mmalign.train(config(tmp_path, "ppo", epochs=2, gamma=1.5), log=lambda *a: None)


@pytest.mark.slow
def test_ppo_raises_the_reward_and_its_critic_learns(tmp_path):
    cfg = config(tmp_path, "ppo", steps=20, samples_per_prompt=4, epochs=2, value_lr=1e-2)
    history = mmalign.train(cfg, log=lambda *a: None).history
    rewards = [row["rewards/mean"] for row in history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards
    assert history[-1]["value_loss"] < history[0]["value_loss"]


@pytest.mark.slow
def test_a_resumed_ppo_run_continues_exactly(tmp_path):
    """The critic and its optimizer come back from the checkpoint: value losses match too."""
    assert_resume_continues_exactly(
        tmp_path, lambda path: config(path, "ppo", samples_per_prompt=2, epochs=2, value_lr=1e-2))
