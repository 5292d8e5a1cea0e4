import re
from pathlib import Path

import pytest

from mmalign.protocol import ModalityPlugin

from mmalign.config import dump_config, load_config
from mmalign.errors import ConfigError
from mmalign.run_validation import check_loss_options, validate_for_run

MIN = {"model": {"tiny": {"hidden_size": 8}}}


def test_defaults_and_overrides():
    cfg = load_config(data=MIN, overrides=["train.lr=1e-5", "loss.beta=0.5", "model.lora.r=4",
                                           "train.callbacks=[]"])
    assert cfg.train.lr == 1e-5 and cfg.loss.beta == 0.5
    assert cfg.model.lora.r == 4 and cfg.model.lora.alpha == 32
    assert cfg.train.callbacks == []


def test_yaml_file_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  tiny: {hidden_size: 8}\ntrain:\n  lr: 1e-4\n  max_steps: 3\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 3
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again).train == cfg.train


def test_unknown_key_names_it_and_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(data={**MIN, "train": {"learning_rate": 1.0}})
    msg = str(e.value)
    assert "train.learning_rate" in msg and "lr" in msg and "max_steps" in msg


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(data={**MIN, "trainer": {}})


@pytest.mark.parametrize("key,value,expected", [
    ("train.lr", "fast", "train.lr' must be a number"),
    ("train.max_steps", 1.5, "train.max_steps' must be an integer"),
    ("train.precision", "bf32", "train.precision' must be one of"),
    ("model.lora", 3, "model.lora' must be a mapping"),
    ("train.progress", "yes", "train.progress' must be true/false"),
])
def test_wrong_types_name_the_key(key, value, expected):
    section, name = key.split(".")
    data = {**MIN, section: {**MIN.get(section, {}), name: value}}
    with pytest.raises(ConfigError) as e:
        load_config(data=data)
    assert expected in str(e.value)


def test_override_with_unknown_key_fails():
    with pytest.raises(ConfigError, match="loss.betta"):
        load_config(data=MIN, overrides=["loss.betta=0.1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  tiny: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_model_is_required():
    with pytest.raises(ConfigError, match="model.name_or_path"):
        load_config(data={})


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("")
    path = tmp_path / "c.yaml"
    path.write_text("model: {tiny: {}}\ndata: {train: d/train.jsonl}\n")
    assert load_config(path).data.train == str(tmp_path / "d" / "train.jsonl")


# --- whole-config validation (mmalign/validation.py, run_validation.py) and `mmalign check` ---------

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*/*.yaml"))
TRAIN_CONFIGS = [c for c in CONFIGS if c.parent.name != "accelerate"]


def test_every_shipped_config_is_valid():
    assert len(TRAIN_CONFIGS) >= 9  # demo (3), text, vlm, diffusion
    for path in TRAIN_CONFIGS:
        cfg = load_config(path)
        validate_for_run(cfg, str(path))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=[f"{c.parent.name}/{c.stem}" for c in TRAIN_CONFIGS])
def test_check_command_on_shipped_configs(path, capsys):
    from mmalign.cli import main

    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid" in out
    if path.parent.name == "demo":  # local tiny models: the data files are read
        assert "records read from" in out and "no model was loaded" in out
    else:  # hub ids: nothing is downloaded, and the summary says the data were not read
        assert "config only" in out and "downloads nothing" in out


def test_duplicate_keys_name_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  tiny: {}\ntrain:\n  lr: 1.0e-5\n  max_steps: 3\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError, match=r"line 6: key 'lr' is given twice in one section \(first at line 4\)"):
        load_config(path)


def test_top_level_list_from_python():
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(data=[1, 2])


@pytest.mark.parametrize("override,key", [
    ("train.epochs=.nan", "train.epochs"), ("train.adam_betas=[0.9, .inf]", "train.adam_betas[1]"),
    ("model.tiny.layer_norm_eps=-.inf", "model.tiny.layer_norm_eps"), ("loss.sft_weight=.nan", "loss.sft_weight"),
    ("model.lora.dropout=.nan", "model.lora.dropout"), ("train.warmup_ratio=.nan", "train.warmup_ratio"),
])
def test_non_finite_numbers_are_refused_everywhere(override, key):
    with pytest.raises(ConfigError, match=f"'{re.escape(key)}' must be a finite number"):
        load_config(data=MIN, overrides=[override])


def test_loss_options_checked_against_the_declared_options():
    from mmalign.plugins import registry

    spec = registry().get("losses", "sigmoid")
    check_loss_options(spec, {"label_smoothing": 0.2}, 0.1)  # valid: no error
    check_loss_options(spec, {"label_smoothing": 0}, 0.1)  # an integer where a number is expected
    with pytest.raises(ConfigError, match="label_smoothing.*must be a number like its default"):
        check_loss_options(spec, {"label_smoothing": True}, 0.1)
    with pytest.raises(ConfigError, match=r"\[0, 0.5\)"):  # the loss's own range check, run now
        check_loss_options(spec, {"label_smoothing": 0.5}, 0.1)
    with pytest.raises(ConfigError, match="not an option of loss 'sigmoid'. Its options: label_smoothing"):
        check_loss_options(spec, {"smoothing": 0.1}, 0.1)


def test_plugin_check_config_runs_before_anything_loads(monkeypatch):
    """validate_for_run calls the modality plugin's check_config, and builds nothing."""
    from mmalign.plugins import Entry, registry

    calls = []

    class Plugin(ModalityPlugin):
        @staticmethod
        def check_config(model_cfg, data_cfg):
            calls.append(model_cfg.options)
            if model_cfg.options.get("speed") != "fast":
                raise ConfigError("model.options.speed must be 'fast'.")

        def __init__(self, *args):
            raise AssertionError("validation must not build the plugin")

    monkeypatch.setitem(registry().entries["rewards"], "toy", Entry("toy", Plugin, "tests"))
    data = {"model": {"reward": "toy", "tiny": {}, "options": {"speed": "slow"}}, "data": {"train": "x.jsonl"}}
    with pytest.raises(ConfigError, match="config: model.options.speed must be 'fast'"):
        validate_for_run(load_config(data=data))
    data["model"]["options"]["speed"] = "fast"
    validate_for_run(load_config(data=data))
    assert calls == [{"speed": "slow"}, {"speed": "fast"}]


def test_evaluator_metadata_decides_the_modality():
    from mmalign.plugins import registry

    reg = registry()
    assert reg.entry("evaluators", "chair").meta["modalities"] == ("vlm",)
    assert reg.entry("evaluators", "diffusion_accuracy").meta["modalities"] == ("diffusion",)
    assert "modalities" not in reg.entry("evaluators", "reward_accuracy").meta  # every modality
    cfg = load_config(data={**MIN, "data": {"train": "x.jsonl"}, "eval": {"evaluators": ["pope"]}})
    with pytest.raises(ConfigError, match=r"eval.evaluators\[0\]' is 'pope', which applies to model.reward vlm"):
        validate_for_run(cfg)


def test_python_api_validates_before_anything_is_written(tmp_path, tokenizer_dir, pairs_file):
    """mmalign.train(dict) goes through the same checks as the CLI (the engine calls them)."""
    from conftest import base_config
    from mmalign import train

    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, eval={"evaluators": ["reward_accuracy", "chair"]})
    with pytest.raises(ConfigError, match=r"eval.evaluators\[1\]' is 'chair'"):
        train(cfg, log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_overrides_do_not_write_into_the_callers_dict():
    data = {"model": {"tiny": {"hidden_size": 8}}}
    load_config(data=data, overrides=["model.lora.r=4", "model.tiny.hidden_size=16"])
    assert data == {"model": {"tiny": {"hidden_size": 8}}}
