"""The standalone demo configs (configs/demo/*.yaml): `mmalign train` then `mmalign eval` reports
implicit-reward accuracy on the held-out pairs, for every modality."""

import json
from pathlib import Path

import pytest

from mmalign.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "demo"


@pytest.mark.parametrize("modality", ["text", "vlm", "control", pytest.param("diffusion", marks=pytest.mark.slow)])
def test_train_then_eval_reports_implicit_reward_accuracy(tmp_path, modality):
    config = str(CONFIGS / f"{modality}.yaml")
    short = ["--set", f"output_dir={tmp_path}", "--set", "train.max_steps=6", "--set", "train.eval_every=0",
             "--set", "train.save_every=0", "--set", "train.progress=false"]
    assert main(["train", config, *short]) == 0
    assert main(["eval", config, *short[:2]]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= result["eval/reward_accuracy"] <= 1.0 and result["eval/pairs"] > 0
    assert (tmp_path / "final").is_dir() and (tmp_path / "metrics.jsonl").exists()
