"""The offline diffusion demo and the shipped demo config. The full demo is the outcome check of
issue 4 (implicit accuracy and win rate >= 0.8 in under 8 minutes); the quick runs check the plumbing."""

import json
from pathlib import Path

import pytest

from mmalign.cli import main

REPO = Path(__file__).resolve().parents[2]
REPORT_KEYS = {"implicit_accuracy_reference", "implicit_accuracy_policy", "gold_score_reference",
               "gold_score_policy", "win_rate_vs_reference"}


@pytest.mark.slow  # several seconds: kept out of the quick set
def test_quick_demo_writes_report_grid_and_pipelines(tmp_path):
    assert main(["demo", "diffusion", "--out", str(tmp_path), "--quick"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["implicit_accuracy_reference"] == 0.5  # policy == reference: every pair a tie
    assert (tmp_path / "samples.png").stat().st_size > 500 and (tmp_path / "report.png").exists()
    assert (tmp_path / "dpo" / "final" / "model_index.json").exists()  # a loadable pipeline


@pytest.mark.slow  # several seconds: kept out of the quick set
def test_shipped_config_trains_and_resumes(tmp_path):
    config = str(REPO / "configs" / "demo" / "diffusion.yaml")
    common = ["--set", f"output_dir={tmp_path}", "--set", "train.progress=false",
              "--set", "train.save_every=1", "--set", "train.eval_every=0", "--set", "train.log_every=1"]
    assert main(["train", config, "--set", "train.max_steps=1", *common]) == 0
    assert main(["train", config, "--set", "train.max_steps=2", "--resume", *common]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "eval/implicit_accuracy" in rows[-1]
    assert (tmp_path / "final" / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.slow
def test_full_demo_outcome(full_diffusion_demo):  # tests/conftest.py: `mmalign demo diffusion`
    report = json.loads((full_diffusion_demo / "report.json").read_text())
    assert report["implicit_accuracy_reference"] == 0.5
    assert report["implicit_accuracy_policy"] >= 0.8
    assert report["win_rate_vs_reference"] >= 0.8
    assert report["gold_score_policy"] > report["gold_score_reference"]
    assert report["seconds_total"] < 480
