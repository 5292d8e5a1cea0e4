"""mmalign against its peers (TRL's DPOTrainer; the diffusers Diffusion-DPO SDXL step), side by side,
each in its own process.

    python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--out PATH]
                             [--cores 0-11 --cores-per-job 2 --jobs 6] [--gpu]

For every workload: build the tiny model and the data once, measure the matmul peak, then run
mmalign (fp32 and bf16) and the peer (its defaults, and fp32 or bf16) in separate processes on the same
weights and records, and print a table; results go to benchmarks/results/latest.json (see
README.md for every field). ``--cores``/``--cores-per-job``/``--jobs`` pin each child to its own
cores and run several at once (a many-core machine); by default the children run one after the
other on all the cores this process may use. ``--gpu`` runs them on the GPU, one at a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

from benchmarks.report import summarize_workload, table
from benchmarks.workloads import Workload, build, make_workload, workload_names

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "latest.json"
# (runner, variant) per workload kind: mmalign in fp32 and bf16 autocast; the peer with its defaults
# and in fp32 (TRL: defaults = bf16 autocast + gradient checkpointing; the diffusers script: fp32 by
# default, bf16 with --mixed_precision bf16).
VARIANTS = {"text": [("mmalign", "fp32"), ("mmalign", "bf16"), ("trl", "default"), ("trl", "fp32")],
            "diffusion": [("mmalign", "fp32"), ("mmalign", "bf16"), ("diffusers_dpo", "fp32"),
                          ("diffusers_dpo", "bf16")]}
VARIANTS["vlm"] = VARIANTS["online"] = VARIANTS["vlm_online"] = VARIANTS["text"]
# ddpo: TRL 0.23.1's DDPOTrainer in its own environment (benchmarks/ddpo_peer.py), fp32 or bf16 autocast
VARIANTS["ddpo"] = [("mmalign", "fp32"), ("mmalign", "bf16"), ("trl", "fp32"), ("trl", "bf16")]
CHILD_TIMEOUT_S = 1800  # default of --child-timeout


def parse_cores(text: str) -> list[int]:
    cores: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        cores += list(range(int(a), int(b or a) + 1))
    return cores


def _pin(cores: list[int]):
    """preexec_fn pinning the child to ``cores``; a sandbox that refuses sched_setaffinity leaves the
    child on the cores it inherited (the same set when --cores is not given) rather than failing it."""
    def pin() -> None:
        try:
            os.sched_setaffinity(0, cores)
        except OSError:
            pass
    return pin


def child(what: str, spec: dict, work: Path, cores: list[int], gpu: bool, command: list[str] | None = None,
          timeout: float = CHILD_TIMEOUT_S) -> dict:
    """Run one measurement in a fresh process pinned to ``cores``; its JSON result, or the error.
    ``command``: the child's command line before SPEC OUT (default: this python's benchmarks.runners).
    On a GPU run the spec says so (``"gpu": true``) and the child fails unless its torch sees a GPU."""
    tag = f"{what}-{spec.get('workload', {}).get('name', 'peak')}-{spec.get('variant', '')}".rstrip("-")
    spec_path, out_path, log_path = work / f"{tag}.spec.json", work / f"{tag}.out.json", work / f"{tag}.log"
    spec_path.write_text(json.dumps(dict(spec, gpu=gpu)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=str(len(cores)), TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    with log_path.open("w") as log:
        try:
            command = command or [sys.executable, "-m", "benchmarks.runners", what]
            proc = subprocess.run([*command, str(spec_path), str(out_path)],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                                  preexec_fn=_pin(cores))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = f"timeout after {timeout:.0f} s"
    if code != 0 or not out_path.exists():
        tail = log_path.read_text()[-2000:]
        return {"error": f"exit {code}", "log_tail": tail}
    return json.loads(out_path.read_text())


def run_all(workloads: list[Workload], work: Path, slots: list[list[int]], gpu: bool, only=None,
            say=print, on_result=None, peer_pythons: dict | None = None,
            timeout: float = CHILD_TIMEOUT_S, peak: dict | None = None) -> tuple[dict, dict]:
    """Every (workload, variant) in a child of its own, ``len(slots)`` at a time, each pinned to a
    slot's cores; ``on_result(peak, runs)`` after each one (partial results survive a cut-off run).
    ``only``: the variants to run, in this order within each workload when it is a list (with one
    slot, e.g. ``--gpu``, they start in that order: list the pairs first that matter most).
    ``peer_pythons``: {workload kind: python} of peers that run in an environment of their own.
    ``timeout``: seconds each child may run before it is killed (the run goes on with the next).
    ``peak``: the matmul peak measured earlier on this machine (``--peak-from``), else measured here."""
    if peak is None:
        say(f"matmul peak on cores {slots[0]} ...")
        peak = child("peak", {}, work, slots[0], gpu, timeout=timeout)
    peak = {k: peak[k] for k in ("fp32", "bf16", "error", "log_tail") if k in peak}
    runs: dict[str, dict] = {w.name: {} for w in workloads}
    free: Queue = Queue()
    lock = threading.Lock()
    for s in slots:
        free.put(s)

    def job(w: Workload, runner: str, variant: str) -> None:
        cores = free.get()
        try:
            spec = {"workload": w.to_json(), "variant": variant, "out_dir": str(work / f"out-{w.name}-{runner}-{variant}")}
            own_env = runner == "trl" and w.kind in (peer_pythons or {})
            command = [peer_pythons[w.kind], "-m", f"benchmarks.{w.kind}_peer", variant] if own_env else None
            result = child(runner, spec, work, cores, gpu, command, timeout)
            if "s_per_step" in result:
                status = f"{result['s_per_step']:.3f} s/step, peak RSS {result['peak_rss_mb']:.0f} MB"
                if "gpu_peak_allocated_mb" in result:
                    status += f", GPU peak {result['gpu_peak_allocated_mb']:.0f} MB"
            else:  # the end of the child's log, so that the console says why
                last = [line for line in result.get("log_tail", "").splitlines() if line.strip()][-3:]
                status = result["error"] + "".join(f"\n      | {line[:300]}" for line in last)
            say(f"  {w.name:<14} {runner:<8} {variant:<8} {status}  (cores {cores})")
            with lock:  # several jobs finish at once; the results file is written whole each time
                runs[w.name][f"{runner}_{variant}"] = result
                if on_result is not None:
                    on_result(peak, runs)
        finally:
            free.put(cores)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = [pool.submit(job, w, r, v) for w in workloads for r, v in _ordered(VARIANTS[w.kind], only)]
        for f in futures:
            f.result()
    return peak, runs


def _ordered(variants: list[tuple[str, str]], only) -> list[tuple[str, str]]:
    """The workload's (runner, variant) pairs that ``only`` names, in ``only``'s order when it is a
    list (None: all of them, in the default order)."""
    if only is None:
        return list(variants)
    rank = {name: i for i, name in enumerate(only)}
    return sorted((rv for rv in variants if f"{rv[0]}_{rv[1]}" in rank), key=lambda rv: rank[f"{rv[0]}_{rv[1]}"])


def machine(gpu: bool, cores_per_job: int, jobs: int) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores_visible": len(os.sched_getaffinity(0)), "cores_per_child": cores_per_job,
            "concurrent_children": jobs, "torch": torch.__version__, "python": platform.python_version()}
    if gpu:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps per run (smoke run)")
    ap.add_argument("--only", help=f"comma-separated workloads ({', '.join(workload_names())})")
    ap.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    ap.add_argument("--cores", help="cores the children may use, e.g. 0-11 (default: this process's)")
    ap.add_argument("--cores-per-job", type=int, default=0, help="cores per child (default: all of --cores)")
    ap.add_argument("--gpu", action="store_true", help="run on the GPU (children one at a time)")
    ap.add_argument("--steps", type=int, help="timed steps per run (default: 8; text_variable 12; diffusion 6)")
    ap.add_argument("--variants", help="comma-separated subset of " + ",".join(
        sorted({f"{r}_{v}" for vs in VARIANTS.values() for r, v in vs})))
    ap.add_argument("--workdir", help="keep models, data and logs here (default: a temporary directory)")
    ap.add_argument("--child-timeout", type=float, default=CHILD_TIMEOUT_S,
                    help="seconds each child may run before it is killed and reported as failed (default: %(default)s)")
    ap.add_argument("--ddpo-peer-python", default=os.environ.get("MMALIGN_BENCH_DDPO_PYTHON"),
                    help="python (or wrapper script) of a prepared environment with TRL 0.23.1 for the ddpo peer, "
                         "used as is (default: $MMALIGN_BENCH_DDPO_PYTHON, else benchmarks/.envs/trl-0.23, "
                         "created with venv + pip on first use)")
    ap.add_argument("--peak-from", help="take the matmul peak from this earlier results JSON of the same machine and "
                                        "device instead of measuring it again (one child less)")
    return ap


def _selection(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    """(the workloads to run, the variants to run in order or None for all), unknown names refused."""
    known = workload_names()
    names = args.only.split(",") if args.only else known
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown or unavailable workload(s) {', '.join(unknown)}; available here: {', '.join(known)} "
                 f"(diffusion and ddpo need diffusers and the diffusion plugin not blocked)")
    only = args.variants.split(",") if args.variants else None
    all_variants = {f"{r}_{v}" for vs in VARIANTS.values() for r, v in vs}
    if only and set(only) - all_variants:
        ap.error(f"unknown variant(s) {', '.join(sorted(set(only) - all_variants))}; known: {', '.join(sorted(all_variants))}")
    return names, only


def _earlier_peak(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict | None:
    """--peak-from: the matmul peak of an earlier results JSON of this machine and device."""
    if not args.peak_from:
        return None
    earlier = json.loads(Path(args.peak_from).read_text())
    if earlier.get("device") != ("cuda" if args.gpu else "cpu") or "error" in earlier["matmul_peak_flops"]:
        ap.error(f"--peak-from {args.peak_from}: no {'GPU' if args.gpu else 'CPU'} matmul peak in it")
    return earlier["matmul_peak_flops"]


def main(argv: list[str] | None = None) -> dict:
    ap = _parser()
    args = ap.parse_args(argv)
    names, only = _selection(ap, args)
    peer_pythons = {}
    if "ddpo" in names and (only is None or {"trl_fp32", "trl_bf16"} & set(only)):
        from benchmarks.ddpo import peer_python

        # a prepared python is used as is; else the environment is created on first use
        peer_pythons["ddpo"] = peer_python(say=lambda s: print(s, flush=True), python=args.ddpo_peer_python)
    peak = _earlier_peak(ap, args)
    cores = parse_cores(args.cores) if args.cores else sorted(os.sched_getaffinity(0))
    per = args.cores_per_job or len(cores)
    slots = [cores[i:i + per] for i in range(0, len(cores) - per + 1, per)]
    if args.gpu:
        slots = slots[:1]  # one GPU: one child at a time
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="mmalign-bench-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    workloads = []
    for name in names:
        print(f"building {name} ...", flush=True)
        w = make_workload(name, args.quick)
        w.steps = args.steps or w.steps
        workloads.append(build(w, work / name))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine(args.gpu, len(slots[0]), len(slots))

    def write(peak: dict, runs: dict) -> dict:
        results = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": info, "device": "cuda" if args.gpu else "cpu", "quick": args.quick,
            "matmul_peak_flops": peak,
            "workloads": {w.name: summarize_workload(w, runs[w.name], peak) for w in workloads},
        }
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_text(json.dumps(results, indent=1) + "\n")
        tmp_out.replace(out)
        return results

    peak, runs = run_all(workloads, work, slots, args.gpu, only, say=lambda s: print(s, flush=True),
                         on_result=write, peer_pythons=peer_pythons, timeout=args.child_timeout, peak=peak)
    results = write(peak, runs)
    if "error" not in peak:
        print(f"\nmatmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    print(table(results))
    print(f"\nwritten {out}")
    if tmp is not None:
        tmp.cleanup()
    return results


if __name__ == "__main__":
    main()
