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
import time
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
    """{job name: its result}, each job with one torch thread. ``workers`` 1 (or a single job) runs
    them here, in order, logging to ``log``; more runs them in that many processes, in the order
    given as cores free up (put the longest first), each writing its output to ``logs/NAME.log``.
    A job's exception is raised here."""
    if workers <= 1 or len(jobs) <= 1:
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
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_in_child, job, logs / f"{job.name}.log"): job.name for job in jobs}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            log(f"      {futures[future]} done ({time.time() - start:.0f} s since the trainings started)")
    return {job.name: results[job.name] for job in jobs}


def _in_child(job: Job, log_file: Path) -> Any:
    import torch

    torch.set_num_threads(1)
    with open(log_file, "w", buffering=1) as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        return job.function(*job.args, log=print)
