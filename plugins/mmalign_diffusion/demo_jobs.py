"""Independent trainings of a demo, side by side on the machine's cores.

The diffusion RL demo trains four models from one SFT reference (offline Diffusion-DPO, DDPO, GRPO,
online Diffusion-DPO) and none needs another. Their models are tiny: a second torch thread speeds
one training by 15 to 35%, a second training on the other core halves the wall time. Each job
runs in a process of its own (``spawn``: no forked OpenMP state) with one torch thread, its output
going to ``logs/NAME.log``, and returns a picklable result. Every job is seeded by its config, so
the results are those of the jobs run one after the other (tested).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Job:
    """``function(*args, log=...)``, a top-level function (it is pickled by name)."""

    name: str
    function: Callable[..., Any]
    args: tuple = field(default_factory=tuple)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_jobs(jobs: list[Job], workers: int, logs: Path, log=print) -> dict[str, Any]:
    """{job name: its result}, each job with one torch thread. ``workers`` 1 (or a single job, or a
    main script spawn cannot import: ``python -`` reads it from stdin) runs them here, in order,
    logging to ``log``; more runs them in that many processes, in the order given as cores free up
    (put the longest first), each writing its output to ``logs/NAME.log``. The first job to fail
    stops the others, and its exception is raised here. From a script of your own, guard the call
    with ``if __name__ == "__main__":``, as multiprocessing's spawn requires."""
    if workers <= 1 or len(jobs) <= 1 or not _main_importable():
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return {job.name: job.function(*job.args, log=log) for job in jobs}
        finally:
            torch.set_num_threads(threads)
    logs.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log(f"      {len(jobs)} trainings on {workers} processes, one thread each; their output in {logs}/")
    results = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_in_child, job, logs / f"{job.name}.log"): job.name for job in jobs}
        for future in as_completed(futures):
            name = futures[future]
            if future.exception() is not None:
                log(f"      {name} failed (its log: {logs / f'{name}.log'}); the other trainings are stopped")
            results[name] = future.result()
            log(f"      {name} done ({time.time() - start:.0f} s since the trainings started)")
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    return {job.name: results[job.name] for job in jobs}


def _main_importable() -> bool:
    """Spawned processes import the parent's ``__main__`` from its file: none (a REPL, a notebook,
    ``python -c``) is fine, a file that does not exist (``python -``, stdin) is not."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or Path(path).exists()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the jobs not started and end the running ones now (a failed job, Ctrl-C)."""
    pool.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before 3.14
        process.terminate()


def _in_child(job: Job, log_file: Path) -> Any:
    import torch

    torch.set_num_threads(1)
    with open(log_file, "w", buffering=1) as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        for fd in (1, 2):  # also what writes to the descriptors: C code, loggers holding the old stderr
            os.dup2(out.fileno(), fd)
        try:
            return job.function(*job.args, log=print)
        except BaseException:
            traceback.print_exc()
            raise
