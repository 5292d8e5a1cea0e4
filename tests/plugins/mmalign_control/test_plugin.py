"""The control plugin as the registry and the CLI see it: `mmalign plugins` lists the modality, the
CPL loss, the npz format, the evaluator and the demo; a loss on probabilities is refused."""

from pathlib import Path

import pytest

from mmalign.cli import main
from mmalign.config import load_config
from mmalign.errors import ConfigError
from mmalign.losses.objective import check_fits
from mmalign.plugins import registry

from control_helpers import plugin

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "demo"


def test_mmalign_plugins_lists_the_control_modality_and_cpl(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for line in ("control            from control", "cpl                from losses", "npz                from control",
                 "control_return     from control"):
        assert line in out
    assert "control" in registry().names("demos")


def test_losses_on_probabilities_do_not_fit_log_densities():
    reward = plugin()
    check_fits(registry().get("losses", "cpl"), reward)
    check_fits(registry().get("losses", "sigmoid"), reward)
    with pytest.raises(ConfigError, match="log_density"):
        check_fits(registry().get("losses", "orpo"), reward)


def test_unknown_model_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.options.clip: not an option of the control plugin"):
        plugin(options={"clip": 0.9})
    with pytest.raises(ConfigError, match="model.tiny"):
        load_config(data={"output_dir": str(tmp_path), "model": {"reward": "control"}, "data": {"train": "x.jsonl"}})


def test_dpo_on_segments_with_a_bc_policy_as_reference(tmp_path):
    import math

    from mmalign.engine import train

    config = str(CONFIGS / "control.yaml")
    common = ["loss.options={}", "train.max_steps=3", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
              "train.progress=false", "train.callbacks=[]", "eval.evaluators=[reward_accuracy]", "eval.options={}"]
    bc = train(load_config(config, overrides=[f"output_dir={tmp_path / 'bc'}", "loss.name=sft",
                                              "reference.strategy=auto", *common]), log=lambda *a: None)
    final = str(bc.final_dir)
    dpo = train(load_config(config, overrides=[
        f"output_dir={tmp_path / 'dpo'}", "loss.name=sigmoid", "reference.strategy=copy",
        "model.tiny=null", f"model.name_or_path={final}", f"reference.name_or_path={final}", *common]),
        log=lambda *a: None)
    assert dpo.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == BC reference at step 0
    assert dpo.history[-1]["loss"] < dpo.history[0]["loss"]
