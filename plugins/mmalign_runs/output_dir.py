"""The output folder of the local run store (and of ``mmalign demo`` / ``sweep``'s ``--out``): its
lock's name, what counts as empty, a fresh one (what an earlier run left moved aside with
``--overwrite``, nothing deleted)."""

from __future__ import annotations

import time
from pathlib import Path

from mmalign.errors import ConfigError, MmalignError
from mmalign_runs.safe_files import writing

LOCK_NAME = ".mmalign.lock"
# Kept across --overwrite and ignored when deciding if a folder is empty: reusable by design
# (keyed by its own fingerprint). So are the CLI's crash logs (mmalign-crash-*.log).
KEPT_ON_OVERWRITE = ("reference_cache",)


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


def fresh_out(out: str | Path, overwrite: bool) -> None:
    """A demo or sweep starts in an empty --out: one with files from an earlier run is refused, or
    with --overwrite moved aside (nothing is deleted), as for ``mmalign train``."""
    out = Path(out)
    if existing_contents(out) and not overwrite:
        raise MmalignError(f"--out {out} already holds files from an earlier run. Pass --overwrite to "
                           f"move them aside (into {out.name}.previous-<time>) and start anew, or "
                           f"choose another --out.")
    prepare_fresh_output(out, overwrite=overwrite, log=print)
