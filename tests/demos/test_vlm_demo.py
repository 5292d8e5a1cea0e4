"""The offline VLM demo: hallucination (CHAIR) before and after DPO. The full run is issue 3's
outcome check; the quick run checks the plumbing."""

import json

import pytest

from mmalign.cli import main

KEYS = {"chair_i_reference", "chair_i_policy", "chair_s_reference", "chair_s_policy",
        "recall_reference", "recall_policy", "wellformed_reference", "wellformed_policy"}


@pytest.mark.slow  # several seconds: kept out of the quick set
def test_quick_vlm_demo_writes_report_and_plots(tmp_path):
    assert main(["demo", "vlm", "--out", str(tmp_path), "--quick"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert KEYS <= set(report)
    assert (tmp_path / "report.png").stat().st_size > 1000 and (tmp_path / "chair.png").exists()


@pytest.mark.slow
def test_full_vlm_demo_outcome(full_vlm_demo):  # tests/conftest.py: `mmalign demo vlm`
    r = json.loads((full_vlm_demo / "report.json").read_text())
    assert r["chair_i_reference"] >= 0.1  # the reference really hallucinates
    assert r["chair_i_policy"] <= r["chair_i_reference"] / 4
    assert r["recall_policy"] >= r["recall_reference"] - 0.05  # saying less is no win
    assert r["wellformed_policy"] >= 0.9
    assert r["seconds_total"] < 480
