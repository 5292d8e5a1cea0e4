"""``mmalign demo rl``: online RL with a verifiable reward (issue 14). The full run is the outcome
check: GRPO's held-out greedy accuracy >= 0.85 and >= 0.25 above the SFT model's, within 5
minutes on one torch thread; the quick run checks the plumbing."""

import json

import pytest

from mmalign.cli import main

REPORT_KEYS = {"sft", "grpo", "accuracy_gain", "grpo_kl_last", "grpo_accuracy_curve", "seconds_total"}
ACCURACY_KEYS = {"accuracy", "accuracy_carry", "accuracy_no_carry", "mean_length"}


@pytest.mark.slow
def test_quick_rl_demo_writes_report_and_plot(tmp_path):
    assert main(["demo", "rl", "--out", str(tmp_path), "--quick"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert ACCURACY_KEYS <= set(report["sft"]) and ACCURACY_KEYS <= set(report["grpo"])
    assert report["grpo_accuracy_curve"][0][0] == 0 and len(report["grpo_accuracy_curve"]) >= 3
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert (tmp_path / "grpo" / "final" / "model.safetensors").exists()
    assert report["seconds_total"] < 60


@pytest.mark.slow
def test_full_rl_demo_outcome(tmp_path):
    assert main(["demo", "rl", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["grpo"]["accuracy"] >= 0.85
    assert report["accuracy_gain"] >= 0.25
    assert report["grpo"]["accuracy_carry"] > report["sft"]["accuracy_carry"]  # GRPO learned the carry
    assert report["seconds_total"] < 300
