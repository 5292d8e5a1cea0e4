"""The files a run writes beside its checkpoints: atomic text writes, metrics.jsonl (read back
tolerating a line cut short by a killed run, truncated on resume), the end-of-run summary table,
and :func:`writing`, which turns a failed write (a full disk, a read-only folder, a path that is
a file) into a one-paragraph error naming the path and the fix (exit code 2)."""

from __future__ import annotations

import errno
import os
import json
from contextlib import contextmanager
from pathlib import Path

from mmalign.errors import ConfigError

_FIXES = {
    errno.ENOSPC: "the disk is full: free space (or point output_dir at another disk), then continue "
                  "with --resume",
    errno.EDQUOT: "the disk quota is used up: free space, then continue with --resume",
    errno.EACCES: "it is not writable: fix its permissions or choose another output_dir",
    errno.EPERM: "it is not writable: fix its permissions or choose another output_dir",
    errno.EROFS: "it is on a read-only file system: choose another output_dir",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another output_dir",
    errno.EEXIST: "a file of that name is in the way: move it or choose another output_dir",
}


@contextmanager
def writing(path: Path, what: str = "write"):
    """Run a block that writes under ``path``; an OSError becomes a :class:`ConfigError` naming
    ``path``, the system's reason and the fix. Checkpoints already written are never touched by
    the block's caller before its write succeeds, so the message can say they are intact."""
    try:
        yield
    except OSError as err:
        where = err.filename or path
        fix = _FIXES.get(err.errno, "check the path and its disk")
        raise ConfigError(f"{where}: cannot {what} ({err.strerror or err}); {fix}. Checkpoints "
                          f"already written under {path} are left as they were.") from err


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


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


def summary_table(history: list[dict]) -> str:
    """First and last logged values of the main metrics, as a small text table."""
    if not history:
        return "no metrics logged"
    keys = [k for k in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen",
                        "rewards/rejected", "logps/chosen", "eval/reward_accuracy", "eval/margin",
                        "rewards/mean", "kl", "entropy", "completions/mean_length")
            if any(k in row for row in history)]
    if not keys:
        return "no metrics logged"
    first, last = history[0], history[-1]
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  {'step ' + str(first['step']):>12}  {'step ' + str(last['step']):>12}"]
    for k in keys:
        a = f"{first[k]:.4f}" if k in first else "-"
        b = f"{last[k]:.4f}" if k in last else "-"
        lines.append(f"{k:<{width}}  {a:>12}  {b:>12}")
    return "\n".join(lines)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk (before the rename that publishes it)."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def fsync_dir(root: Path) -> None:
    """Flush a directory's entries (a rename within it) to disk."""
    dir_fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
