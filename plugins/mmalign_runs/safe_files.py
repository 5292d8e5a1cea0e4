"""Writing a run's files safely: atomic text writes; :func:`writing`, which turns a failed write (a
full disk, a read-only folder, a path that is a file) into a one-paragraph error naming the path and
the fix (exit code 2); flushing written files and folders to disk before a rename publishes them.
Used by the local store and by what writes beside it (the model card, ``mmalign eval``'s results).
The output folder itself (a fresh one, its lock) is output_dir.py's."""

from __future__ import annotations

import errno
import os
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
