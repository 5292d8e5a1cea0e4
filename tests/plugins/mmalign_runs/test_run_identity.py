"""The run identity (stable across processes) and the output folder's lock (atomic)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmalign.errors import ConfigError
from mmalign_runs.output_dir import LOCK_NAME
from mmalign_runs.run_identity import acquire_lock, release_lock

REPO = Path(__file__).resolve().parents[3]


def test_a_lock_being_created_by_another_run_is_not_taken_over(tmp_path):
    """Two runs started at once: the first has created the lock file and holds it, but has not
    written its pid yet. The second must refuse, not take the empty file for a stale one."""
    lock = tmp_path / LOCK_NAME
    first = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(ConfigError, match="another mmalign run"):
            acquire_lock(tmp_path, log=print)
        assert lock.read_text() == ""  # the first run's file is left alone
    finally:
        os.close(first)


def test_a_released_lock_can_be_taken_again_and_a_held_one_cannot(tmp_path):
    held = acquire_lock(tmp_path, log=print)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        acquire_lock(tmp_path, log=print)
    release_lock(held)
    assert not (tmp_path / LOCK_NAME).exists()
    release_lock(acquire_lock(tmp_path, log=print))


def test_a_dead_holder_releases_the_lock(tmp_path):
    """A run killed with SIGKILL cannot clean up: the kernel drops its flock, the next run takes
    over (its pid, dead now, is named in a note)."""
    code = ("import sys; from pathlib import Path; from mmalign_runs.run_identity import acquire_lock; "
            "acquire_lock(Path(sys.argv[1]), print); import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    assert proc.wait() == -9 and (tmp_path / LOCK_NAME).exists()
    notes = []
    release_lock(acquire_lock(tmp_path, log=notes.append))
    assert notes and f"pid {proc.pid}" in notes[0]


def test_the_fingerprint_is_the_same_in_every_process_and_hash_seed(tmp_path):
    """Resume (and every process of a multi-process run) compares fingerprints computed in other
    processes: nothing in them may depend on Python's per-process hash seed."""
    code = ("from mmalign.config import load_config; from mmalign_runs.run_identity import new_identity; "
            f"print(new_identity(load_config({str(REPO / 'configs/demo/text.yaml')!r})).fingerprint)")
    prints = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("0", "1", "977")}
    assert len(prints) == 1 and len(prints.pop().strip()) == 16
