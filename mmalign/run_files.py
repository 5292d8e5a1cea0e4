"""Writing a run's files safely: atomic text writes, the end-of-run summary table, and
:func:`writing`, which turns a failed write (a full disk, a read-only folder, a path that is a file)
into a one-paragraph error naming the path and the fix (exit code 2). The output folder itself (a
fresh one, its lock) is the run store's (mmalign_runs.output_dir)."""

from __future__ import annotations

import errno
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
