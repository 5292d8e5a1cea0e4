"""Control policies: an MLP over observations with a tanh-squashed Gaussian head (continuous
actions in a box) or a categorical head (discrete actions), built from a small config and saved as
``model.safetensors`` plus ``config.json``; :func:`load_policy` reads them back.

Continuous actions: the MLP gives a mean mu and a log standard deviation per action dimension;
u ~ N(mu, sigma^2) and a = loc + scale * tanh(u), with loc and scale from the action bounds. The
log-likelihood of an action a is the change of variables

    log pi(a | s) = sum_d [ log N(u_d; mu_d, sigma_d) - log(1 - tanh(u_d)^2) - log scale_d ],
    u = atanh((a - loc) / scale)

The deterministic action (evaluation) is loc + scale * tanh(mu). Saved policies load with
``mmalign_control.load_policy(directory)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmalign.errors import ConfigError

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
FORMAT = "mmalign-control-policy"
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@dataclass
class PolicyConfig:
    """What ``model.tiny`` of a control run holds (and ``config.json`` next to saved weights)."""

    obs_dim: int = 0
    action_dim: int = 0  # continuous: dimensions of the action box; discrete: number of actions
    discrete: bool = False
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    activation: str = "relu"
    action_low: list[float] = field(default_factory=list)  # continuous: bounds per dimension (default -1)
    action_high: list[float] = field(default_factory=list)  # (default 1)
    log_std_min: float = -5.0  # the log standard deviation is squashed into [min, max]
    log_std_max: float = 2.0

    def __post_init__(self) -> None:
        if not self.discrete:
            self.action_low = [float(v) for v in (self.action_low or [-1.0] * self.action_dim)]
            self.action_high = [float(v) for v in (self.action_high or [1.0] * self.action_dim)]


def policy_config(values: dict, where: str = "model.tiny") -> PolicyConfig:
    """A checked :class:`PolicyConfig` from a dict; a ConfigError naming the key otherwise."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: the control plugin needs a mapping such as "
                          f"{{obs_dim: 3, action_dim: 1, action_low: [-2], action_high: [2]}}.")
    known = {f.name for f in fields(PolicyConfig)}
    unknown = sorted(set(values) - known - {"format"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a key of a control policy (its keys: {', '.join(sorted(known))}).")
    try:
        cfg = PolicyConfig(**{k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}.") from e
    for key in ("obs_dim", "action_dim"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{key}: must be a positive integer; got {value!r}.")
    if cfg.discrete and cfg.action_dim < 2:
        raise ConfigError(f"{where}.action_dim: a discrete policy needs at least 2 actions; got {cfg.action_dim}.")
    if not isinstance(cfg.hidden, list) or not all(isinstance(h, int) and h > 0 for h in cfg.hidden):
        raise ConfigError(f"{where}.hidden: a list of positive layer widths, e.g. [128, 128]; got {cfg.hidden!r}.")
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"{where}.activation: one of {', '.join(ACTIVATIONS)}; got {cfg.activation!r}.")
    if not cfg.discrete:
        if len(cfg.action_low) != cfg.action_dim or len(cfg.action_high) != cfg.action_dim:
            raise ConfigError(f"{where}.action_low / action_high: one bound per action dimension "
                              f"({cfg.action_dim}).")
        if any(hi <= lo for lo, hi in zip(cfg.action_low, cfg.action_high)):
            raise ConfigError(f"{where}.action_high: every upper bound must exceed its lower bound.")
    if not cfg.log_std_min < cfg.log_std_max:
        raise ConfigError(f"{where}.log_std_min: must be below log_std_max.")
    return cfg


class ControlPolicy(nn.Module):
    """pi(a | s): ``forward(observations [..., obs_dim])`` gives the head's raw output
    [..., n] (logits) or [..., 2d] (mu, then the unsquashed log std); :func:`action_log_prob`
    turns it into log-likelihoods (the plugin calls ``forward``, so a wrapped model scores alike)."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        layers, width = [], config.obs_dim
        for size in config.hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[config.activation]()]
            width = size
        self.body = nn.Sequential(*layers, nn.Linear(width, config.action_dim * (1 if config.discrete else 2)))

    def forward(self, observations: Tensor) -> Tensor:
        return self.body(observations)

    def log_prob(self, observations: Tensor, actions: Tensor) -> Tensor:
        """log pi(a_t | s_t) per step: observations [..., obs_dim], actions [..., d] (strictly
        inside the bounds) or [...] integers (discrete) -> [...]."""
        return action_log_prob(self.config, self(observations), actions)

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        """The deterministic action: loc + scale * tanh(mu), or the most likely discrete action."""
        return mean_action(self.config, self(observations))


def action_box(config: PolicyConfig, like: Tensor) -> tuple[Tensor, Tensor]:
    """(loc, scale) [d] of the action bounds, on ``like``'s device."""
    low = torch.tensor(config.action_low, device=like.device, dtype=torch.float32)
    high = torch.tensor(config.action_high, device=like.device, dtype=torch.float32)
    return (high + low) / 2, (high - low) / 2


def gaussian_head(config: PolicyConfig, head: Tensor) -> tuple[Tensor, Tensor]:
    """(mu, log_std) [..., d] from the head's output; log_std squashed smoothly into
    [log_std_min, log_std_max] so that it can neither collapse nor explode."""
    mean, raw = head.float().chunk(2, dim=-1)
    lo, hi = config.log_std_min, config.log_std_max
    return mean, lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1)


def action_log_prob(config: PolicyConfig, head: Tensor, actions: Tensor) -> Tensor:
    """log pi(a | s) [...] from the head's output [..., out] and actions [..., d] / [...]
    (the change of variables of the module docstring for continuous actions)."""
    if config.discrete:
        return torch.log_softmax(head.float(), -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    mean, log_std = gaussian_head(config, head)
    loc, scale = action_box(config, head)
    u = torch.atanh((actions.float() - loc) / scale)
    gaussian = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    squash = 2 * (math.log(2) - u - F.softplus(-2 * u))  # log(1 - tanh(u)^2), stable for large |u|
    return (gaussian - squash - scale.log()).sum(-1)


def mean_action(config: PolicyConfig, head: Tensor) -> Tensor:
    """The deterministic action from the head's output: loc + scale * tanh(mu), or the argmax."""
    if config.discrete:
        return head.argmax(-1)
    loc, scale = action_box(config, head)
    return loc + scale * torch.tanh(gaussian_head(config, head)[0])


def save_policy(policy: ControlPolicy, directory: str | Path) -> None:
    """``config.json`` (the :class:`PolicyConfig` and a format tag) and ``model.safetensors``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps({"format": FORMAT, **asdict(policy.config)}, indent=1))
    state = {k: v.detach().float().contiguous().cpu() for k, v in policy.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))


def read_config(directory: str | Path) -> PolicyConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: not found; a control policy directory holds {CONFIG_NAME} and "
                          f"{WEIGHTS_NAME} (as mmalign_control's save writes them).")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a control policy config (\"format\" must be \"{FORMAT}\").")
    return policy_config(values, str(path))


def load_policy(path: str | Path) -> ControlPolicy:
    """The policy saved in directory ``path`` (``final/`` of a control run), in eval mode.

        from mmalign_control import load_policy
        policy = load_policy("runs/control/final")
        action = policy.act(torch.as_tensor(observation))
    """
    from safetensors.torch import load_file

    policy = ControlPolicy(read_config(path))
    policy.load_state_dict(load_file(str(Path(path) / WEIGHTS_NAME)))
    return policy.eval()
