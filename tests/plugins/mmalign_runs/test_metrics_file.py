"""metrics.jsonl read back after a kill, and truncated to the checkpoint's step on resume."""

from __future__ import annotations

import json

from mmalign_runs.metrics_file import read_metrics as _read_metrics, truncate_metrics as _truncate_metrics


def test_a_metrics_line_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 0.5} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    assert _read_metrics(path) == rows
    _truncate_metrics(path, 2)
    assert _read_metrics(path) == rows[:2] and path.read_text().endswith("}\n")
