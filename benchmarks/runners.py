"""The two trainers under test, each timed per optimizer step inside its own process.

mmalign: the real engine, ``mmalign.train(config dict)``, with ``train.log_every: 1`` and a callback
registered in mmalign's registry that timestamps every ``on_log`` (called once per optimizer step,
after the update). The peer: TRL's ``DPOTrainer`` with a ``TrainerCallback`` that timestamps every
``on_step_end`` (also after the update). On a GPU both callbacks synchronize first, so a timestamp
means the step's work is done.

Run as ``python -m benchmarks.runners {mmalign,trl,peak} SPEC.json OUT.json``; the result (per-step
times, peak RSS of this process) is written to OUT.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mmalign.callbacks import Callback
from benchmarks.timing import memory as _memory
from benchmarks.timing import child_device, summarize, use_all_cores
from benchmarks.timing import sync as _sync
from benchmarks.workloads import Workload, peer_records

LR = 1e-5
BETA = 0.1
DIFFUSION = dict(lr=1e-4, beta=5000.0, weight_decay=1e-2)  # the SDXL script's beta_dpo and AdamW decay


# --- mmalign ----------------------------------------------------------------------------------------
def mmalign_config(w: Workload, precision: str, out_dir: str) -> dict:
    """A standalone mmalign config for the workload: full fine-tuning, frozen reference copy with
    its forward every step (no reference cache), AdamW, linear schedule, no eval, no checkpoints."""
    if w.kind == "diffusion":
        return _diffusion_config(w, precision, out_dir)
    options = {"train_vision_tower": True} if w.kind == "vlm" else {}  # full fine-tuning, as the peer
    return {
        "output_dir": out_dir, "seed": 0,
        "model": {"reward": w.kind, "name_or_path": w.model_dir, "options": options},
        "reference": {"strategy": "copy", "cache": "none"},
        "data": {"train": w.data_file, "max_length": 1024},
        "loss": {"name": "sigmoid", "beta": BETA},
        "train": {"max_steps": w.total_steps, "batch_size": w.pairs, "lr": LR,
                  "precision": "bf16" if precision == "bf16" else "no", "log_every": 1,
                  "progress": False, "callbacks": ["benchmark_timer"], "max_grad_norm": 1.0},
        "eval": {"evaluators": []},
    }


def _diffusion_config(w: Workload, precision: str, out_dir: str) -> dict:
    """LoRA rank 4 on the UNet's attention projections, reference = adapters disabled; the plugin's
    in-memory caches of VAE latents and text embeddings (filled in the first epoch, the warm-up)."""
    from benchmarks.diffusion import LORA_TARGETS

    return {
        "output_dir": out_dir, "seed": 0,
        "model": {"reward": "diffusion", "name_or_path": w.model_dir,
                  "lora": {"r": 4, "alpha": 4, "dropout": 0.0, "target_modules": LORA_TARGETS}},
        "reference": {"strategy": "auto", "cache": "none"},
        "data": {"train": w.data_file},
        "loss": {"name": "sigmoid", "beta": DIFFUSION["beta"]},
        "train": {"max_steps": w.total_steps, "batch_size": w.pairs, "lr": DIFFUSION["lr"],
                  "weight_decay": DIFFUSION["weight_decay"], "lr_scheduler": "constant",
                  "precision": "bf16" if precision == "bf16" else "no", "log_every": 1, "progress": False,
                  "callbacks": ["benchmark_timer"], "max_grad_norm": 1.0},
        "eval": {"evaluators": []},
    }


class StepTimer(Callback):
    """mmalign callback: a timestamp at every logged step (log_every 1: every optimizer step)."""

    def __init__(self, stamps: list[float]):
        self.stamps = stamps

    def on_log(self, step: int, row: dict) -> None:
        _sync()
        self.stamps.append(time.perf_counter())


def run_mmalign(w: Workload, precision: str, out_dir: str, log=print) -> dict:
    import mmalign

    stamps: list[float] = []

    class TimerPlugin:  # registered in-process, exactly as a plugin's callback would be
        @mmalign.hookimpl
        def mmalign_register_callbacks(self, register):
            register("benchmark_timer", lambda output_dir: StepTimer(stamps))

    with mmalign.register(TimerPlugin(), name="benchmarks"):
        # scratch output: a rerun of the benchmarks replaces the previous one (moved aside, not deleted)
        mmalign.train(mmalign_config(w, precision, out_dir), log=log, overwrite=True)
    return {**summarize(stamps, w.warmup), **_memory()}


# --- TRL --------------------------------------------------------------------------------------------
def trl_args(w: Workload, variant: str, out_dir: str, device: str):
    """DPOConfig for ``variant``: "default" (TRL's defaults: bf16 autocast, gradient checkpointing)
    or "fp32" (bf16 off, checkpointing off). Everything else is shared with mmalign's config."""
    from trl import DPOConfig

    kwargs = dict(output_dir=out_dir, per_device_train_batch_size=w.pairs, max_steps=w.total_steps,
                  learning_rate=LR, beta=BETA, max_grad_norm=1.0, report_to="none", save_strategy="no",
                  disable_tqdm=True, seed=0, train_sampling_strategy="sequential", use_cpu=device == "cpu")
    if variant == "fp32":
        kwargs.update(bf16=False, gradient_checkpointing=False)
    elif variant != "default":
        raise ValueError(f"unknown TRL variant {variant!r}")
    return DPOConfig(**kwargs)


def run_trl(w: Workload, variant: str, out_dir: str, device: str) -> dict:
    from datasets import Dataset, Image
    from transformers import TrainerCallback
    from trl import DPOTrainer

    stamps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            stamps.append(time.perf_counter())

    rows = peer_records(w)  # mmalign's order; read sequentially, so both see the same batches
    columns = ("prompt", "chosen", "rejected") + (("image",) if w.kind == "vlm" else ())
    data = [{k: r[k] for k in columns} for r in rows]
    if w.kind == "vlm":
        for r in data:
            r["image"] = str(Path(w.data_file).parent / r["image"])
    dataset = Dataset.from_list(data)
    if w.kind == "vlm":
        dataset = dataset.cast_column("image", Image())
    trainer = DPOTrainer(model=w.model_dir, args=trl_args(w, variant, out_dir, device), train_dataset=dataset,
                         callbacks=[Timer()])
    trainer.train()
    return {**summarize(stamps, w.warmup), **_memory()}


def run_diffusers_dpo(w: Workload, precision: str) -> dict:
    from benchmarks.diffusion import run_baseline

    out = run_baseline(w, precision, DIFFUSION["lr"], DIFFUSION["weight_decay"])
    result = summarize(out["stamps"], w.warmup)
    timed_encode = out["encode_s"][w.warmup:]
    result["encode_share"] = sum(timed_encode) / sum(result["step_times"])  # VAE + text encoders
    return {**result, **_memory()}


def run_peak(device: str) -> dict:
    from benchmarks.flops import matmul_peak

    return matmul_peak(device)


def main(argv: list[str]) -> None:
    what, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    import torch

    threads = use_all_cores()
    device, gpu = child_device(spec), bool(spec.get("gpu"))
    started = time.perf_counter()
    if what == "peak":
        result = run_peak(device)
    else:
        w = Workload.from_json(spec["workload"])
        if w.kind == "ddpo" and what == "mmalign":  # its peer runs in TRL 0.23.1's env: benchmarks/ddpo_peer.py
            from benchmarks.ddpo import run_mmalign_ddpo

            result = run_mmalign_ddpo(w, spec["variant"], spec["out_dir"], gpu=gpu)
        elif w.kind in ("online", "vlm_online") and what in ("mmalign", "trl"):
            from benchmarks.online import run_mmalign_online, run_trl_online

            run = run_mmalign_online if what == "mmalign" else run_trl_online
            result = run(w, spec["variant"], spec["out_dir"], *([device] if what == "trl" else []))
        elif what == "mmalign":
            result = run_mmalign(w, spec["variant"], spec["out_dir"])
        elif what == "trl":
            result = run_trl(w, spec["variant"], spec["out_dir"], device)
        elif what == "diffusers_dpo":
            result = run_diffusers_dpo(w, spec["variant"])
        else:
            raise SystemExit(f"unknown runner {what!r}")
    result.update(threads=threads, device=device, torch=torch.__version__, wall_s=time.perf_counter() - started)
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
