"""Pendulum-v1 for the control demo: gymnasium's dynamics vectorised in numpy (to compute the
scripted expert's values V(s) from many states at once), the scripted expert and the biased data
policy.

The dynamics are gymnasium 1.x's ``PendulumEnv.step`` written for arrays of states (a test checks
them against the environment); gymnasium itself runs the data rollouts and every evaluation.
"""

from __future__ import annotations

import numpy as np

GRAVITY, DT, MAX_SPEED, MAX_TORQUE = 10.0, 0.05, 8.0, 2.0
# energy of the upright pendulum at rest, in the units of the dynamics below (thddot = 15 sin th + 3 u)
UPRIGHT_ENERGY = 1.5 * GRAVITY


def angle_normalize(theta: np.ndarray) -> np.ndarray:
    return (theta + np.pi) % (2 * np.pi) - np.pi


def step(theta: np.ndarray, theta_dot: np.ndarray, torque: np.ndarray):
    """One step of Pendulum-v1 for arrays of states [N]: (theta', theta_dot', reward)."""
    u = np.clip(torque, -MAX_TORQUE, MAX_TORQUE)
    reward = -(angle_normalize(theta) ** 2 + 0.1 * theta_dot ** 2 + 0.001 * u ** 2)
    new_dot = np.clip(theta_dot + (1.5 * GRAVITY * np.sin(theta) + 3.0 * u) * DT, -MAX_SPEED, MAX_SPEED)
    return theta + new_dot * DT, new_dot, reward


def state_of(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, theta_dot) from observations [..., 3] = (cos theta, sin theta, theta_dot)."""
    return np.arctan2(observations[..., 1], observations[..., 0]), observations[..., 2]


def expert_torque(theta: np.ndarray, theta_dot: np.ndarray) -> np.ndarray:
    """The scripted expert: a PD controller near the top; elsewhere energy pumping (torque along
    the velocity while the energy is below the upright pendulum's, braking above it)."""
    theta = angle_normalize(theta)
    energy = 0.5 * theta_dot ** 2 + 1.5 * GRAVITY * np.cos(theta)
    direction = np.where(theta_dot >= 0, 1.0, -1.0)  # at rest at the bottom: push one way
    pump = np.clip(2.0 * (UPRIGHT_ENERGY - energy) * direction, -MAX_TORQUE, MAX_TORQUE)
    balance = np.clip(-(10.0 * theta + 2.0 * theta_dot), -MAX_TORQUE, MAX_TORQUE)
    return np.where(np.cos(theta) > 0.85, balance, pump)


def expert_action(observation: np.ndarray) -> np.ndarray:
    """The expert's action [1] for one observation [3] (what gymnasium's ``step`` takes)."""
    return np.atleast_1d(expert_torque(*state_of(np.asarray(observation, dtype=np.float64))))


def data_action(observation: np.ndarray, rng: np.random.Generator, flip: float = 0.4,
                noise: float = 0.3) -> np.ndarray:
    """The suboptimal data policy: with probability ``flip`` the expert's action negated (a biased
    error that behaviour cloning cannot average away), else the expert's plus N(0, noise)."""
    action = expert_action(observation)
    if rng.random() < flip:
        return -action
    return np.clip(action + rng.normal(0.0, noise, size=action.shape), -MAX_TORQUE, MAX_TORQUE)


def expert_values(observations: np.ndarray, horizon: int = 100) -> np.ndarray:
    """V(s): the expert's undiscounted return over ``horizon`` steps from each state [N, 3] -> [N],
    all states simulated together (the expert has swung up and balances well within 100 steps,
    after which rewards are about 0, so a longer horizon changes differences of V little)."""
    theta, theta_dot = state_of(np.asarray(observations, dtype=np.float64))
    total = np.zeros(theta.shape)
    for _ in range(horizon):
        theta, theta_dot, reward = step(theta, theta_dot, expert_torque(theta, theta_dot))
        total += reward
    return total
