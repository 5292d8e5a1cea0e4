"""``metrics.jsonl``: one JSON row per logged step, appended as the run goes, read back tolerating a
line cut short by a killed run, and truncated on resume to the checkpoint's step."""

from __future__ import annotations

import json
from pathlib import Path

from mmalign_runs.safe_files import write_atomic, writing


def append_metrics(path: Path, row: dict) -> None:
    """One row of metrics.jsonl."""
    with writing(path), path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def metric_rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) of every complete row; a line cut short by a killed run (or any line that is
    not a JSON object with an integer "step") is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append((line, row))
    return rows


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint so the file reads as one run."""
    if path.exists():
        kept = [line for line, row in metric_rows(path) if row["step"] <= step]
        write_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict]:
    return [row for _, row in metric_rows(path)]
