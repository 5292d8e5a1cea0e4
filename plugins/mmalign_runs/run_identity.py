"""Which run a folder and a checkpoint belong to, and who may write into the folder.

* **Run identity**: the settings that change the math of training (model, data content, loss,
  optimizer, batch, seed, precision, ...), flattened to dotted keys, plus a random ``run_id``
  drawn when a run starts. Every checkpoint stores both (``run_identity.json``). ``--resume``
  refuses a checkpoint whose settings differ from the config's, naming every key that differs,
  unless ``--force-resume`` is given; ``keep_last`` deletes only checkpoints with this run's id.
* **Lock**: ``output_dir/.mmalign.lock``, held with the kernel's ``flock`` (atomic; released
  when the holder dies) and naming the pid of the run writing there. A second run exits with
  code 2 naming that pid; a file left by a dead process is taken over (with a note).
* **Fresh runs**: a run without ``--resume`` into a folder that already holds files refuses,
  unless ``--overwrite``, which moves the old contents (never deletes them) into a sibling folder
  ``<output_dir>.previous-<UTC time>`` (:func:`mmalign_runs.output_dir.prepare_fresh_output`, which the
  demos' ``--out`` uses too).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.config import Config, to_dict
from mmalign.errors import ConfigError
from mmalign.validation import fail
from mmalign_data.reading import data_sha256
from mmalign_runs.output_dir import LOCK_NAME, prepare_fresh_output
from mmalign_runs.safe_files import writing


# Settings that do not change the weights a step produces: where and how often things are
# written or shown, how long the run is (a resume may extend it), evaluation, and the reference
# cache and gradient checkpointing (same values, computed another way). Everything else of the
# resolved config is part of the identity. data.train enters as the sha256 of its content (and
# of the files its records point to), not as a path.
NOT_IDENTITY = ("output_dir", "source", "data.train", "data.eval", "eval.",
                "train.max_steps", "train.epochs", "train.log_every", "train.eval_every",
                "train.save_every", "train.keep_last", "train.run_store", "train.progress", "train.callbacks",
                "train.report_to", "train.push_to_hub",
                "train.on_nonfinite", "reference.cache", "reference.cache_dir",
                "model.gradient_checkpointing")


@dataclass
class RunIdentity:
    run_id: str
    settings: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "fingerprint": self.fingerprint,
                           "settings": self.settings}, indent=1, sort_keys=True)


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_settings(cfg: Config, data_content: str = "") -> dict:
    """The identity settings of ``cfg``: dotted key -> value (JSON-able). ``data_content``: the
    plugin's hash of the files the records point to (images), if any."""
    flat = _flatten(json.loads(json.dumps(to_dict(cfg), default=str)))
    settings = {k: v for k, v in flat.items()
                if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in NOT_IDENTITY)}
    if cfg.data.train:
        settings["data.train (sha256)"] = data_sha256(cfg.data.train, file_sha256)
    if data_content:
        settings["data.train (files it points to)"] = data_content
    return settings


def new_identity(cfg: Config, data_content: str = "") -> RunIdentity:
    return RunIdentity(uuid.uuid4().hex[:12], run_settings(cfg, data_content))


def differences(saved: dict, now: dict) -> list[str]:
    """'key: checkpoint X, config Y' for every setting that differs. A key the checkpoint lacks
    (written before the key existed) matches when the config leaves it at its default."""
    defaults = _flatten(json.loads(json.dumps(to_dict(Config()), default=str)))
    missing = object()
    keys = [k for k in sorted(set(saved) | set(now))
            if saved.get(k, missing) != now.get(k, missing)
            and not (k not in saved and k in defaults and now.get(k) == defaults[k])]
    return [f"{k}: checkpoint {saved.get(k, '(unset)')!r}, config now {now.get(k, '(unset)')!r}"
            for k in keys]


def check_same_run(checkpoint: Path, saved: dict, now: RunIdentity, *, force: bool, log) -> None:
    """Refuse to resume from ``checkpoint`` when its settings differ from the config's."""
    settings = saved.get("settings")
    diff = differences(settings if isinstance(settings, dict) else {}, now.settings)
    if not diff:
        return
    listed = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    if force:
        log(f"warning: --force-resume: {checkpoint} was written with other settings ({listed}); "
            f"resuming anyway, the run is no longer reproducible from one config.")
        return
    raise ConfigError(f"--resume: {checkpoint} belongs to another run: {listed}. Restore those "
                      f"settings (or the data) to continue that run; start a new run in another "
                      f"output_dir (or with --overwrite); or pass --force-resume to continue "
                      f"from these weights anyway.")


# --- the lock -------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


@dataclass
class Lock:
    """A held ``.mmalign.lock``: its path and the open descriptor that holds the ``flock``."""
    path: Path
    fd: int


def acquire_lock(out: Path, log) -> Lock:
    """Take ``out/.mmalign.lock``. Held by a live process: exit 2 naming it. Left by a dead one:
    taken over, with a note.

    The kernel's ``flock`` on the file decides who holds it: taking it is atomic (two runs started
    at once cannot both win, whatever the timing of writing the pid), and it is released when the
    holder dies, however it dies. The pid written inside is only for the message (and a file naming
    a live pid that holds no flock, written by hand or an older mmalign, is respected too)."""
    lock = out / LOCK_NAME
    with writing(out, "create the output folder"):
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(20, "output_dir is a file, not a folder", str(out))
        out.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            held = _try_lock(lock, log)
            if held is not None:
                return held
    raise ConfigError(f"{lock}: could not take the lock (another run keeps taking it). Use another "
                      f"output_dir.")


def _try_lock(lock: Path, log) -> Lock | None:
    """The lock, or None when the file was replaced meanwhile (a releasing run unlinked it after
    we opened it: try again on the new file). Raises ConfigError when a live run holds it."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _refuse(lock, _holder(lock))
        try:
            same_file = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:
            os.close(fd)
            return None
        holder = _holder(lock)
        pid, host = holder.get("pid"), holder.get("host")
        if isinstance(pid, int) and pid != os.getpid() and (host != socket.gethostname() or _alive(pid)):
            _refuse(lock, holder)
        if isinstance(pid, int) and pid != os.getpid():
            log(f"note: {lock} was left by a run that is gone (pid {pid}); taking it over.")
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        return Lock(lock, fd)
    except BaseException:
        _close(fd)
        raise


def _refuse(lock: Path, holder: dict) -> None:
    pid, host = holder.get("pid"), holder.get("host")
    who = f"pid {pid}" if isinstance(pid, int) else "its pid not yet written"
    where = f" on host {host}" if host and host != socket.gethostname() else ""
    raise ConfigError(f"{lock.parent}: another mmalign run ({who}{where}) is writing here ({lock}). "
                      f"Wait for it to finish, or use another output_dir. If no such run exists, "
                      f"delete {lock}.")


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def release_lock(lock: Lock | None) -> None:
    """Remove the lock file while still holding it, then let go (a run that opened the old file
    meanwhile sees it is gone and takes a new one)."""
    if lock is None:
        return
    if _holder(lock.path).get("pid") == os.getpid():
        lock.path.unlink(missing_ok=True)
    _close(lock.fd)


def claim_output_dir(out: Path, *, is_main: bool, fresh: bool, overwrite: bool, cleanup, vote, log) -> None:
    """On the main process: take ``out``'s lock (released by ``cleanup``) and, for a new run,
    check it is empty (see :func:`prepare_fresh_output`). ``vote(failed)``: true if any process
    failed, so that every process stops together rather than waiting for the main one."""
    error = None
    if is_main:
        try:
            created = _missing_folders(out)
            cleanup.callback(_remove_if_empty, created)  # runs last: a run that wrote nothing leaves nothing
            cleanup.callback(release_lock, acquire_lock(out, log))
            if fresh:
                prepare_fresh_output(out, overwrite=overwrite, log=log)
        except ConfigError as err:
            error = err
    if vote(error is not None):
        raise error or ConfigError(f"{out}: the main process could not start the run (see its message).")


def _missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, deepest first."""
    missing, path = [], out.absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            return


def check_output_dir(cfg: Any) -> None:
    """Before anything loads (``mmalign train``): ``output_dir``, or the nearest part of it that
    exists, is a writable directory (registered as the local store's ``check``)."""
    out = Path(cfg.output_dir)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise fail(None, "output_dir", f"'{cfg.output_dir}': '{parent}' is a file, not a "
                                               f"directory. Choose another output_dir.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise fail(None, "output_dir", f"'{cfg.output_dir}': '{parent}' is not writable. "
                                               f"Choose a directory you can write to, or fix its "
                                               f"permissions.")
            break
