"""What every benchmark child measures, in any environment: threads, per-step times, peak memory.

Kept free of mmalign imports: the ``ddpo`` peer's child (benchmarks/ddpo_peer.py) runs with the
python of TRL 0.23.1's own environment, where mmalign is not installed.
"""

from __future__ import annotations

import os
import resource
import statistics


def use_all_cores() -> int:
    """Threads = the cores this process may run on (the harness pins each child to its cores)."""
    import torch

    n = len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def child_device(spec: dict) -> str:
    """"cuda" when this child's torch sees a GPU, else "cpu"; a GPU run (``spec["gpu"]``) whose
    torch sees none stops here, so that a CPU run is never timed as a GPU one."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.get("gpu") and device != "cuda":
        raise SystemExit(f"--gpu, but this child's torch {torch.__version__} sees no GPU")
    return device


def sync() -> None:
    """Wait for the GPU (if any), so that a timestamp means the step's work is done."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def summarize(stamps: list[float], warmup: int) -> dict:
    """Per-step wall times of the steps after the warm-up (stamps: end of each step); the warm-up
    steps after the first are kept apart (``warmup_step_times``)."""
    if len(stamps) <= warmup or warmup < 1:
        raise RuntimeError(f"{len(stamps)} step timestamps for {warmup} warm-up steps: nothing timed")
    durations = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
    return {"s_per_step": statistics.median(durations), "s_per_step_mean": statistics.fmean(durations),
            "step_times": durations, "warmup_step_times": [b - a for a, b in zip(stamps[:warmup - 1], stamps[1:warmup])]}


def memory() -> dict:
    """Peak RSS of this process (imports included), and the GPU's peak allocation on a GPU."""
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def median_split(split: dict) -> dict:
    """Median per-step seconds of each part (``generate_s``, ...), and every step's (``*_times``)."""
    out = {}
    for key, values in split.items():
        out[key] = statistics.median(values) if values else None
        out[key.replace("_s", "_times")] = values
    return out
