"""A modality plugin's own data.* keys (mmalign/plugin_data_options.py): written flat under data:
as with TRL, checked against the data_options dataclass of the reward named by model.reward, and
unknown to the core config."""

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

import mmalign
import mmalign.plugins
from mmalign.protocol import ModalityPlugin
from mmalign.config import DataConfig, NoDataOptions, dump_config, load_config
from mmalign.errors import ConfigError, RegistryError
from mmalign_reference.cache import fingerprint
from mmalign_runs.run_identity import differences, run_settings
from mmalign_text.data_options import TextDataOptions

MIN = {"model": {"tiny": {"hidden_size": 8}}}
TEXT_KEYS = ("tokenization", "max_length", "truncation_mode", "max_prompt_length",
             "max_completion_length", "too_long")


def test_the_core_data_config_knows_no_text_key():
    core = {f.name for f in dataclasses.fields(DataConfig)}
    assert not core & set(TEXT_KEYS)
    assert {f.name for f in dataclasses.fields(TextDataOptions)} == set(TEXT_KEYS)


def test_the_core_imports_no_plugin_module():
    core = Path(mmalign.plugins.__file__).parent
    for path in core.rglob("*.py"):
        assert not re.search(r"^\s*(from|import) mmalign_", path.read_text(), re.M), path


def test_text_keys_are_written_flat_and_typed():
    cfg = load_config(data={**MIN, "data": {"max_length": 512, "truncation_mode": "keep_end"}},
                      overrides=["data.too_long=skip"])
    assert isinstance(cfg.data.options, TextDataOptions)
    assert (cfg.data.options.max_length, cfg.data.options.truncation_mode) == (512, "keep_end")
    assert cfg.data.options.too_long == "skip" and cfg.data.options.tokenization == "trl"
    assert load_config(data=MIN).data.options == TextDataOptions()


def test_dump_writes_them_back_flat_and_loads_identically(tmp_path):
    cfg = load_config(data={**MIN, "data": {"max_length": 77, "eval_size": 3}})
    written = yaml.safe_load(dump_config(cfg))
    assert written["data"]["max_length"] == 77 and "options" not in written["data"]
    assert list(written["data"])[:2] == ["train", "eval"]  # core keys first, then the plugin's
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert dataclasses.replace(load_config(path), source=None) == cfg


def test_unknown_data_key_lists_core_and_plugin_keys():
    with pytest.raises(ConfigError) as e:
        load_config(data={**MIN, "data": {"max_lenght": 5}})
    msg = str(e.value)
    assert "unknown key 'data.max_lenght'" in msg and "eval_size" in msg and "max_length" in msg
    assert "'text' plugin (model.reward)" in msg


def test_a_plugin_without_data_options_refuses_text_keys():
    data = {"model": {"reward": "diffusion", "tiny": {"hidden_size": 8}}}
    assert isinstance(load_config(data=data).data.options, NoDataOptions)
    with pytest.raises(ConfigError, match=r"unknown key 'data.max_length'.*'diffusion' plugin .*\(none\)"):
        load_config(data={**data, "data": {"max_length": 5}})


def test_unknown_reward_keeps_the_registry_error():
    data = {"model": {"reward": "audio", "tiny": {"hidden_size": 8}}}
    assert isinstance(load_config(data=data).data.options, NoDataOptions)  # reported by the run's checks
    with pytest.raises(RegistryError, match="Unknown reward 'audio'.*Registered rewards: .*text"):
        load_config(data={**data, "data": {"max_length": 5}})
    with pytest.raises(ConfigError, match="model.reward' is an empty string"):  # core values first
        load_config(data={"model": {"reward": "", "tiny": {}}, "data": {"max_length": 5}})


def test_vlm_refuses_keep_end_and_text_allows_it():
    data = {**MIN, "data": {"truncation_mode": "keep_end"}}
    assert load_config(data=data).data.options.truncation_mode == "keep_end"
    with pytest.raises(ConfigError, match="key 'data.truncation_mode' is keep_end, which vision-language"):
        load_config(data={"model": {"reward": "vlm", "tiny": {}}, "data": data["data"]})


def test_identity_and_reference_cache_see_the_plugin_keys(tmp_path):
    a = load_config(data=MIN)
    b = load_config(data=MIN, overrides=["data.max_length=64"])
    assert run_settings(a)["data.max_length"] == 1024
    assert differences(run_settings(a), run_settings(b)) == [
        "data.max_length: checkpoint 1024, config now 64"]
    assert fingerprint(a, []) != fingerprint(b, []) and fingerprint(a, []) == fingerprint(load_config(data=MIN), [])


@dataclass
class ToyDataOptions:
    resolution: int = 64
    crop: Literal["center", "random"] = "center"

    def problem(self):
        return ("data.resolution", "must be a multiple of 8.") if self.resolution % 8 else None


class ToyReward(ModalityPlugin):
    data_options = ToyDataOptions


class ToyPlugin:
    @mmalign.hookimpl
    def mmalign_register_rewards(self, register):
        register("toy", ToyReward)


@pytest.fixture
def toy():
    with mmalign.register(ToyPlugin(), name="toy-plugin"):
        yield


def test_a_third_party_plugin_declares_its_own_keys(toy):
    model = {"reward": "toy", "tiny": {"hidden_size": 8}}
    cfg = load_config(data={"model": model, "data": {"resolution": 128}}, overrides=["data.crop=random"])
    assert cfg.data.options == ToyDataOptions(128, "random")
    assert yaml.safe_load(dump_config(cfg))["data"]["resolution"] == 128
    with pytest.raises(ConfigError, match="key 'data.crop' must be one of 'center', 'random'"):
        load_config(data={"model": model, "data": {"crop": "left"}})
    with pytest.raises(ConfigError, match="key 'data.resolution' must be a multiple of 8"):
        load_config(data={"model": model, "data": {"resolution": 100}})
    with pytest.raises(ConfigError, match="unknown key 'data.max_length'.*: resolution, crop"):
        load_config(data={"model": model, "data": {"max_length": 100}})
