"""The control_return evaluator: deterministic rollouts of the mean action on fixed seeds, and its
option errors."""

import types

import numpy as np
import pytest
import torch

from mmalign.errors import ConfigError
from mmalign_control import pendulum
from mmalign_control.evaluate import control_return, episode_returns, policy_actor

from control_helpers import plugin


def context(reward, policy, **options):
    return types.SimpleNamespace(policy=policy, reward=reward, options_for=lambda name: dict(options))


def test_control_return_rolls_out_the_mean_action_on_fixed_seeds():
    reward = plugin()
    torch.manual_seed(0)
    policy = reward.load_policy()
    ctx = context(reward, policy, env="Pendulum-v1", episodes=3, seed=7, max_episode_steps=50)
    first, second = control_return(ctx), control_return(ctx)
    assert first == second and first["episodes"] == 3.0
    returns = episode_returns(policy_actor(policy, reward.policy_config), "Pendulum-v1", 3, 7, 50)
    assert first["return_mean"] == pytest.approx(np.mean(returns)) and first["return_std"] == pytest.approx(np.std(returns))
    assert policy.training  # the evaluator restores the mode it found


def test_the_expert_beats_the_data_policy_on_the_same_seeds():
    rng = np.random.default_rng(0)
    expert = np.mean(episode_returns(pendulum.expert_action, "Pendulum-v1", 5, 100))
    data = np.mean(episode_returns(lambda o: pendulum.data_action(o, rng).astype(np.float32), "Pendulum-v1", 5, 100))
    assert expert > -400 and data < expert - 300


@pytest.mark.parametrize("options,message", [
    ({}, "env: name the gymnasium environment"),
    ({"env": "Pendulum-v1", "episode": 3}, "episode: not an option"),
    ({"env": "Pendulum-v1", "episodes": 0}, "episodes: must be"),
    ({"env": "NoSuchEnv-v9"}, "gymnasium cannot make 'NoSuchEnv-v9'"),
    ({"env": "CartPole-v1"}, "has observations"),
])
def test_bad_options_are_config_errors(options, message):
    reward = plugin()
    with pytest.raises(ConfigError, match=message):
        control_return(context(reward, reward.load_policy(), **options))
