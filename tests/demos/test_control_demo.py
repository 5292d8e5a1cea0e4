"""``mmalign demo control`` (issue 16): the full run is the outcome check: CPL's mean return beats
BC on all segments and BC on the preferred segments, and closes at least half of the gap between
BC-all and the scripted expert (fixed evaluation seeds), within 3 minutes; the quick run checks
the plumbing."""

import json

import pytest

from mmalign.cli import main

RUNS = ("data", "expert", "bc_all", "bc_preferred", "cpl")


def read_report(directory):
    report = json.loads((directory / "report.json").read_text())
    for name in RUNS:
        assert {"return_mean", "return_std", "episodes"} <= set(report[name])
    return report


@pytest.mark.slow
def test_quick_control_demo_writes_report_and_plot(tmp_path):
    assert main(["demo", "control", "--out", str(tmp_path), "--quick"]) == 0
    report = read_report(tmp_path)
    assert set(report["curves"]) == {"bc_all", "bc_preferred", "cpl"} and len(report["curves"]["cpl"]) >= 2
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert (tmp_path / "cpl" / "final" / "model.safetensors").exists()
    assert report["seconds"]["total"] < 60


@pytest.mark.slow
def test_full_control_demo_outcome(tmp_path):
    assert main(["demo", "control", "--out", str(tmp_path)]) == 0
    report = read_report(tmp_path)
    cpl, bc_all, bc_preferred = (report[n]["return_mean"] for n in ("cpl", "bc_all", "bc_preferred"))
    assert cpl > bc_all and cpl > bc_preferred
    assert report["gap_closed"] >= 0.5
    assert report["expert"]["return_mean"] > report["data"]["return_mean"]
    assert report["seconds"]["total"] < 180
