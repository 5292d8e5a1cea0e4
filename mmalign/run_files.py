"""Writing a run's files safely: a fresh output folder (:func:`prepare_fresh_output`), atomic text
writes, flushing to disk, the end-of-run summary table, and :func:`writing`, which turns a failed
write (a full disk, a read-only folder, a path that is a file) into a one-paragraph error naming
the path and the fix (exit code 2)."""

from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path

from mmalign.errors import ConfigError

LOCK_NAME = ".mmalign.lock"
# Kept across --overwrite and ignored when deciding if a folder is empty: reusable by design
# (keyed by its own fingerprint). So are the CLI's crash logs (mmalign-crash-*.log).
KEPT_ON_OVERWRITE = ("reference_cache",)

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


def existing_contents(out: Path) -> list[Path]:
    """What is in ``out`` besides the lock and the reusable reference cache."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name != LOCK_NAME and p.name not in KEPT_ON_OVERWRITE
                  and not p.name.startswith("mmalign-crash-"))  # the CLI's crash logs stay


def prepare_fresh_output(out: Path, *, overwrite: bool, log) -> None:
    """A new run needs an empty ``output_dir``: refuse one with files, or with ``overwrite`` move
    them into ``<output_dir>.previous-<UTC time>`` (nothing is deleted)."""
    found = existing_contents(out)
    if not found:
        return
    names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
    if not overwrite:
        raise ConfigError(f"output_dir {out} already holds files ({names}). Continue that run "
                          f"with --resume; or pass --overwrite to move them aside (into "
                          f"{out.name}.previous-<time>) and start anew; or choose another output_dir.")
    aside = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    n = 1
    while aside.exists():
        aside, n = aside.with_name(f"{aside.name.split('~')[0]}~{n}"), n + 1
    with writing(aside, "move the previous run aside"):
        aside.mkdir()
        for path in found:
            path.rename(aside / path.name)
    log(f"--overwrite: the previous contents of {out} ({names}) were moved to {aside}")
