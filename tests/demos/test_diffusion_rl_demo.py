"""``mmalign demo diffusion-rl``: the quick run checks the plumbing (three online algorithms from the
offline demo's SFT model, the report and the grid) and that its trainings side by side give what
they give one after the other; the full run is the outcome check of issue 15 (DDPO wins at least
0.9 of held-out seeds against the reference, caption fidelity within 0.05)."""

import json
import time

import pytest

from mmalign.cli import main
from mmalign.errors import ConfigError
from mmalign_diffusion.demo_jobs import Job, run_jobs
from mmalign_diffusion.rl_demo import ONLINE, QUICK, _train_online, run_demo


@pytest.mark.slow  # about a minute: the quick demo twice (side by side, then one job at a time)
def test_quick_demo_writes_report_and_grid(tmp_path):
    assert main(["demo", "diffusion-rl", "--out", str(tmp_path / "cli"), "--quick"]) == 0
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert set(report["models"]) == {"reference", "offline_dpo", *ONLINE}
    for name in ("offline_dpo", *ONLINE):
        model = report["models"][name]
        assert 0 <= model["win_rate_vs_reference"] <= 1 and 0 <= model["caption_fidelity"] <= 1
        assert model["kl_to_reference"] == pytest.approx(model["kl_to_reference"])  # finite
    assert (tmp_path / "cli" / "samples.png").stat().st_size > 500 and (tmp_path / "cli" / "report.png").exists()
    for name in ONLINE:
        assert (tmp_path / "cli" / name / "final" / "model_index.json").exists()
    side_by_side = run_demo(tmp_path / "two", quick=True, workers=2, log=lambda *a: None)
    assert {log.name for log in (tmp_path / "two" / "logs").iterdir()} == {f"{n}.log" for n in ("offline_dpo", *ONLINE)}
    one_at_a_time = run_demo(tmp_path / "one", quick=True, workers=1, log=lambda *a: None)
    assert not (tmp_path / "one" / "logs").exists()
    assert side_by_side["models"] == one_at_a_time["models"] == report["models"]


def wait(seconds: float, log=print) -> None:
    """A job that takes ``seconds`` (spawned processes import it from this module)."""
    time.sleep(seconds)


@pytest.mark.slow  # seconds: two spawned processes import torch and mmalign
def test_a_failing_job_stops_the_others_and_raises_here(tmp_path):
    bad = Job("ddpo", _train_online, (tmp_path, "ddpo", dict(QUICK, lr=-1.0), 0))
    start = time.time()
    with pytest.raises(ConfigError, match="train.lr"):
        run_jobs([bad, Job("long", wait, (120,))], 2, tmp_path / "logs", log=lambda *a: None)
    assert time.time() - start < 60  # the long job was stopped, not waited for
    assert "train.lr" in (tmp_path / "logs" / "ddpo.log").read_text()  # the traceback, in the job's log
    assert not (tmp_path / "ddpo").exists()


@pytest.mark.slow
def test_full_demo_outcome(tmp_path, full_diffusion_demo):
    # DDPO's outcome, from the full offline demo of tests/conftest.py (what `mmalign demo
    # diffusion-rl` runs first); the quick test above covers GRPO and online Diffusion-DPO's plumbing
    run_demo(tmp_path, offline=full_diffusion_demo, algorithms=("ddpo",), log=lambda *a: None)
    models = json.loads((tmp_path / "report.json").read_text())["models"]
    ddpo, reference = models["ddpo"], models["reference"]
    assert ddpo["win_rate_vs_reference"] >= 0.9
    assert ddpo["caption_fidelity"] >= reference["caption_fidelity"] - 0.05
