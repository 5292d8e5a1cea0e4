"""Keeps the benchmark harness from rotting: builds the text_long and grpo workloads in --quick mode
and times mmalign's real engine on them for a couple of steps, in this process. The peer (TRL) is
imported only by the slow tests, and no timing is asserted: only that the harness still produces
what the benchmark table is made of."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_quick_text_workload_runs_through_mmalign(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.flops import step_flops, timed_flops_per_step, tokens_per_group
    from benchmarks.run import summarize_workload
    from benchmarks.runners import run_mmalign
    from benchmarks.workloads import build, make_workload, peer_records, step_lengths

    w = build(make_workload("text_long", quick=True), tmp_path / "text_long")
    w.steps = 1  # one warm-up step and one timed step keep this test short
    # the builder checked every record's token counts; one step holds 4 pairs of 256 + 32 + 32 tokens
    first = step_lengths(w)[0]
    assert tokens_per_group(first) == {"blocks": 4 * 320, "lm_head": 4 * 64}
    assert step_flops(w.params, first) == 8 * (w.params["blocks"] * 1280 + w.params["lm_head"] * 256)
    assert [r["id"] for r in peer_records(w)] == [f"r{i}" for i in w.order]

    result = run_mmalign(w, "fp32", str(tmp_path / "out"), log=lambda *a: None)
    assert len(result["step_times"]) == 1 and result["s_per_step"] > 0
    assert result["peak_rss_mb"] > 100  # torch alone is more than that

    peer = dict(result, peak_rss_mb=2 * result["peak_rss_mb"], s_per_step=3 * result["s_per_step"])
    row = summarize_workload(w, {"mmalign_fp32": result, "trl_fp32": peer},
                             {"fp32": 1e11, "bf16": 4e11})
    assert math.isclose(row["speedup"], 3.0) and math.isclose(row["rss_ratio"], 0.5)
    assert row["precision"] == "fp32" and row["mmalign"] == "mmalign_fp32"
    assert math.isclose(row["mmalign_flops_share_of_peak"],
                        timed_flops_per_step(w) / result["s_per_step"] / 1e11)


def test_quick_online_workload_builds(tmp_path, monkeypatch):
    """The grpo workload (rloo differs only in the algorithm's name): the builder's prompts (it
    checks 64 tokens each), its FLOPs, the shared reward and mmalign's online config."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.flops import timed_flops_per_step
    from benchmarks.online import even_word_share, online_config
    from benchmarks.workloads import build, make_workload, peer_records

    w = build(make_workload("grpo", quick=True), tmp_path / "grpo")
    assert (w.kind, w.pairs, w.samples) == ("online", 2, 8) and len(peer_records(w)) == w.total_steps * 2
    w.steps = 1  # timed_flops_per_step: the timed steps only
    rows = w.pairs * w.samples  # generation 2NT + policy 6NT + reference 2NT over 16 rows of 64 + 64 tokens
    assert timed_flops_per_step(w) == 10 * rows * (w.params["blocks"] * 128 + w.params["lm_head"] * 64)
    assert even_word_share(["p"], ["w2 w3 w4 w5", ""]) == [0.5, 0.0]
    assert online_config(w, "bf16", "out")["algorithm"]["options"]["samples_per_prompt"] == 8


@pytest.mark.slow
def test_quick_online_workload_runs_through_mmalign(tmp_path, monkeypatch):
    """Two online steps (16-30 s on 2 busy cores: over the quick set's budget, so marked slow)."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.online import run_mmalign_online
    from benchmarks.workloads import build, make_workload

    w = build(make_workload("grpo", quick=True), tmp_path / "grpo")
    w.steps = 1
    result = run_mmalign_online(w, "fp32", str(tmp_path / "out"), log=lambda *a: None)
    assert len(result["step_times"]) == 1 and result["s_per_step"] > 0
    assert 0 < result["generate_s"] < result["s_per_step"] and result["score_s"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_quick_online_workload_runs_through_trl(tmp_path, monkeypatch, name):
    """The peer's side (imports TRL; about 20 s a run on 2 busy cores): same checks on TRL's run."""
    monkeypatch.syspath_prepend(str(REPO))
    pytest.importorskip("trl")
    from benchmarks.online import run_trl_online
    from benchmarks.workloads import build, make_workload

    w = build(make_workload(name, quick=True), tmp_path / name)
    w.steps = 1
    result = run_trl_online(w, "fp32", str(tmp_path / "out"), "cpu")
    assert len(result["step_times"]) == 1 and 0 < result["generate_s"] < result["s_per_step"]
