"""The demo's vectorised Pendulum dynamics against gymnasium's, and the regret labels."""

import numpy as np

from mmalign_control import pendulum
from mmalign_control.demo_data import Segments, random_pairs, regret_advantages
from mmalign_control.evaluate import make_env


def test_vectorised_dynamics_match_gymnasium():
    env = make_env("Pendulum-v1")
    observation, _ = env.reset(seed=3)
    theta, theta_dot = (np.array([v]) for v in env.unwrapped.state)
    rng = np.random.default_rng(0)
    for _ in range(50):
        torque = rng.uniform(-3, 3, size=1).astype(np.float32)  # beyond the bound too: both clip
        observation, reward, *_ = env.step(torque)
        theta, theta_dot, expected = pendulum.step(theta, theta_dot, torque.astype(np.float64))
        assert np.allclose(env.unwrapped.state, [theta[0], theta_dot[0]], atol=1e-5)
        assert np.isclose(reward, expected[0], atol=1e-5)
    env.close()


def test_regret_prefers_the_expert_action_from_the_same_start():
    start = np.array([[np.cos(2.5), np.sin(2.5), 0.5]])
    segments = []
    for sign in (1.0, -1.0):  # the expert's torque, then its negation, for 8 steps
        theta, theta_dot = pendulum.state_of(start)
        obs, acts, rews = [], [], []
        for _ in range(8):
            obs.append(np.stack([np.cos(theta), np.sin(theta), theta_dot], -1)[0])
            torque = sign * pendulum.expert_torque(theta, theta_dot)
            theta, theta_dot, reward = pendulum.step(theta, theta_dot, torque)
            acts.append(torque)
            rews.append(reward[0])
        segments.append((obs, acts, rews, np.stack([np.cos(theta), np.sin(theta), theta_dot], -1)[0]))
    data = Segments(*(np.array([s[i] for s in segments]) for i in range(4)))
    advantages = regret_advantages(data)
    assert advantages[0] > advantages[1]
    pairs, label = random_pairs(10, advantages, seed=0)
    assert np.all(pairs[:, 0] != pairs[:, 1]) and np.all(advantages[pairs[np.arange(10), label]] == advantages.max())
