"""The ``control_return`` evaluator: the policy's mean action rolled out in a gymnasium environment
for N episodes with fixed seeds (episode i resets with seed ``seed + i``), so that every
evaluation of every run sees the same initial states.

Options (``eval.options.control_return``): ``env`` (a gymnasium id, required, e.g. Pendulum-v1),
``episodes`` (default 10), ``seed`` (default 0), ``max_episode_steps`` (default: the
environment's own limit). Returns ``return_mean``, ``return_std`` (population std over the
episodes) and ``episodes``.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from mmalign.errors import ConfigError
from mmalign_control.policy import PolicyConfig, mean_action

OPTIONS = {"env": None, "episodes": 10, "seed": 0, "max_episode_steps": None}


def make_env(env_id: str, max_episode_steps: Optional[int] = None, key: str = "eval.options.control_return.env"):
    try:
        import gymnasium
    except ImportError as e:
        raise ConfigError(f"{key}: rolling policies out needs gymnasium: pip install 'mmalign[control]'.") from e
    try:
        return gymnasium.make(env_id, max_episode_steps=max_episode_steps)
    except gymnasium.error.Error as e:
        raise ConfigError(f"{key}: gymnasium cannot make '{env_id}' ({e}).") from e


def episode_returns(act: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int,
                    max_episode_steps: Optional[int] = None) -> list[float]:
    """The undiscounted return of ``act`` (observation -> action) in each of ``episodes`` episodes,
    episode i reset with seed ``seed + i``."""
    env = make_env(env_id, max_episode_steps)
    returns = []
    try:
        for i in range(episodes):
            observation, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                observation, reward, terminated, truncated, _ = env.step(act(observation))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def policy_actor(policy: torch.nn.Module, config: PolicyConfig) -> Callable[[np.ndarray], np.ndarray]:
    """observation -> the policy's deterministic action, as the environment takes it."""
    device = next(policy.parameters()).device

    @torch.no_grad()
    def act(observation: np.ndarray) -> np.ndarray:
        head = policy(torch.as_tensor(observation, dtype=torch.float32, device=device))
        action = mean_action(config, head).cpu().numpy()
        return action.astype(np.float32) if not config.discrete else int(action)

    return act


def summarize(returns: list[float]) -> dict[str, float]:
    values = np.asarray(returns, dtype=np.float64)
    return {"return_mean": float(values.mean()), "return_std": float(values.std()), "episodes": float(len(values))}


def _options(ctx) -> dict:
    given = ctx.options_for("control_return")
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"eval.options.control_return.{unknown[0]}: not an option of control_return "
                          f"(its options: {', '.join(OPTIONS)}).")
    options = dict(OPTIONS, **given)
    if not isinstance(options["env"], str):
        raise ConfigError("eval.options.control_return.env: name the gymnasium environment to roll the "
                          "policy out in, e.g. {control_return: {env: Pendulum-v1}}.")
    for key in ("episodes", "seed"):
        if isinstance(options[key], bool) or not isinstance(options[key], int) or options[key] < (key == "episodes"):
            raise ConfigError(f"eval.options.control_return.{key}: must be a non-negative integer "
                              f"(episodes at least 1); got {options[key]!r}.")
    return options


def _check_spaces(env_id: str, config: PolicyConfig) -> None:
    env = make_env(env_id)
    obs_shape, space = env.observation_space.shape, env.action_space
    env.close()
    wanted = "n" if config.discrete else "shape"
    if obs_shape != (config.obs_dim,) or (config.discrete and getattr(space, "n", None) != config.action_dim) \
            or (not config.discrete and space.shape != (config.action_dim,)):
        raise ConfigError(f"eval.options.control_return.env: '{env_id}' has observations {obs_shape} and "
                          f"actions {getattr(space, wanted, space)}; the policy (model.tiny) has obs_dim "
                          f"{config.obs_dim} and action_dim {config.action_dim}.")


def control_return(ctx) -> dict[str, float]:
    """Evaluator: mean and std of the return of the policy's deterministic (mean) action."""
    options = _options(ctx)
    config = ctx.reward.policy_config
    _check_spaces(options["env"], config)
    was_training = ctx.policy.training
    ctx.policy.eval()
    try:
        returns = episode_returns(policy_actor(ctx.policy, config), options["env"], options["episodes"],
                                  options["seed"], options["max_episode_steps"])
    finally:
        ctx.policy.train(was_training)
    return summarize(returns)
