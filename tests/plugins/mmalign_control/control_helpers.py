"""Shared by the control plugin's tests: a plugin built from a small policy config, and segments."""

import random

from mmalign.config import ModelConfig
from mmalign.data import Record

PENDULUM = {"obs_dim": 3, "action_dim": 1, "action_low": [-2.0], "action_high": [2.0], "hidden": [16, 16]}


def plugin(tiny=None, options=None):
    from mmalign.plugins import registry

    factory = registry().get("rewards", "control")
    return factory(ModelConfig(reward="control", tiny=dict(tiny or PENDULUM), options=dict(options or {})), None)


def segment(steps, obs_dim=3, action_dim=1, low=-2.0, high=2.0, seed=0, discrete=False):
    rng = random.Random(seed)
    observations = [[rng.uniform(-1, 1) for _ in range(obs_dim)] for _ in range(steps)]
    if discrete:
        actions = [rng.randrange(action_dim) for _ in range(steps)]
    else:
        actions = [[rng.uniform(low, high) for _ in range(action_dim)] for _ in range(steps)]
    return {"observations": observations, "actions": actions, "rewards": [rng.uniform(-1, 0) for _ in range(steps)]}


def pair_record(steps=(5, 3), where="pairs.jsonl:1", **kwargs):
    fields = {"chosen": segment(steps[0], seed=1, **kwargs), "rejected": segment(steps[1], seed=2, **kwargs)}
    return Record(fields, where, None)
