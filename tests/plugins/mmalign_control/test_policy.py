"""Control policies: built from a config, saved as safetensors + config.json, loaded back by
``load_policy``; bad configs are ConfigErrors naming the key."""

import json

import pytest
import torch

from mmalign.errors import ConfigError
from mmalign_control import ControlPolicy, load_policy, save_policy
from mmalign_control.policy import policy_config

from control_helpers import PENDULUM


def test_saved_policy_loads_back_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    policy = ControlPolicy(policy_config(PENDULUM))
    save_policy(policy, tmp_path / "final")
    assert json.loads((tmp_path / "final" / "config.json").read_text())["format"] == "mmalign-control-policy"
    loaded = load_policy(tmp_path / "final")
    observations = torch.randn(7, 3)
    assert torch.equal(loaded(observations), policy(observations))
    actions = loaded.act(observations)
    assert actions.shape == (7, 1) and actions.abs().max() < 2.0  # inside the torque bounds


def test_discrete_policy_acts_with_the_most_likely_action():
    policy = ControlPolicy(policy_config({"obs_dim": 2, "action_dim": 3, "discrete": True}))
    observations = torch.randn(5, 2)
    assert torch.equal(policy.act(observations), policy(observations).argmax(-1))


@pytest.mark.parametrize("tiny,key", [
    ({"obs_dim": 3}, "action_dim"),
    ({"obs_dim": 3, "action_dim": 1, "hidden": [0]}, "hidden"),
    ({"obs_dim": 3, "action_dim": 1, "action_low": [1.0], "action_high": [-1.0]}, "action_high"),
    ({"obs_dim": 3, "action_dim": 2, "action_low": [-1.0]}, "action_low"),
    ({"obs_dim": 3, "action_dim": 1, "widths": [4]}, "widths"),
    ({"obs_dim": 3, "action_dim": 1, "discrete": True}, "action_dim"),
    ({"obs_dim": 3, "action_dim": 1, "activation": "swish"}, "activation"),
])
def test_bad_policy_config_names_the_key(tiny, key):
    with pytest.raises(ConfigError, match=f"model.tiny.{key}|model.tiny: .*{key}"):
        policy_config(tiny)


def test_load_policy_from_a_directory_without_config_says_what_it_needs(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"obs_dim": 3}))
    with pytest.raises(ConfigError, match="format"):
        load_policy(tmp_path)
