"""Multi-process training: 2 CPU processes (gloo) with ``accelerate launch`` and ``torchrun``.

With the same global batch, the loss curve of a 2-process run (batch_size B per process) matches
the single-process run that accumulates 2 micro-batches of B within LOSS_TOLERANCE per step: the
processes' micro-batches are the single process's micro-batches, and every process draws the
randomness (diffusion noise) of all of them in order, keeping its own (mmalign/engine.py
next_batch). For text, whose batches draw no randomness, it also matches one process with batch
size 2B. Metrics and checkpoints are written once; a 2-process run killed in the middle of a
checkpoint, then stopped by SIGTERM, then resumed, ends bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import sys

import pytest
from train_processes import (
    MODALITIES,
    assert_bitwise_equal,
    checkpoint_names,
    launch_command,
    metrics_text,
    modality_config,
    run,
    run_until,
    train_command,
    weights,
    write_config,
)

from mmalign_runs import checkpoint as ckpt

# Measured on the tiny text config: at most 1.2e-7 (float32 rounding of the gradient all-reduce).
LOSS_TOLERANCE = 1e-5
TRAIN = {"max_steps": 8, "save_every": 2, "keep_last": 2, "log_every": 1, "warmup_steps": 2,
         "lr_scheduler": "linear"}


def rows(run_dir):
    """metrics.jsonl's rows without the wall-clock ``time/*`` keys (they differ between runs)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def torchrun_command(config, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "-m", "mmalign.cli", "train", str(config), *args]


# DDPO's per-prompt reward history is kept by one process: a multi-process DDPO run sets
# stat_buffer: 0 (refused otherwise, exit 2), each prompt's group normalised on its own. Its update
# backpropagates step by step (mmalign/unit_chunks.py), synchronising on the last step only.
DDP_MODALITIES = MODALITIES


@pytest.mark.slow
@pytest.mark.parametrize("modality", DDP_MODALITIES)
def test_two_processes_match_one_and_resume_exactly(modality, tmp_path):
    def config(name, **train):
        cfg = modality_config(modality, tmp_path / name / "run", **{**TRAIN, **train})
        if modality == "diffusion-ddpo":
            cfg["algorithm"]["options"]["stat_buffer"] = 0
        return write_config(tmp_path / name / "config.yaml", cfg), cfg

    ddp, ddp_cfg = config("ddp")
    micro = ddp_cfg["train"]["batch_size"]
    single_runs = {"accumulating": config("accumulating", gradient_accumulation_steps=2)[0]}
    if modality == "text":
        single_runs["one batch"] = config("one batch", batch_size=2 * micro)[0]
    for single in single_runs.values():
        proc = run(train_command(single))
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(launch_command(ddp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = rows(tmp_path / "ddp" / "run")

    # the same curve, written once (one row per step, one data report, one final line)
    assert [r["step"] for r in two] == list(range(1, TRAIN["max_steps"] + 1))
    epochs = ddp_cfg.get("algorithm", {}).get("options", {}).get("epochs", 1)  # passes over each rollout
    assert [r["records_seen"] for r in two] == [2 * micro * -(-r["step"] // epochs) for r in two]
    per_step = 2 * micro * ddp_cfg.get("algorithm", {}).get("options", {}).get("samples_per_prompt", 1)
    for r in map(json.loads, (tmp_path / "ddp" / "run" / "metrics.jsonl").read_text().splitlines()):
        assert r["time/samples_per_s"] * r["time/step"] == pytest.approx(per_step)  # both processes' examples
    for name in single_runs:
        one = rows(tmp_path / name / "run")
        assert [r["records_seen"] for r in one] == [r["records_seen"] for r in two]
        assert [r["epoch"] for r in one] == [r["epoch"] for r in two]
        for a, b in zip(one, two):
            assert abs(a["loss"] - b["loss"]) <= LOSS_TOLERANCE, (name, a["step"], a["loss"], b["loss"])
    assert proc.stdout.count(" read, ") == 1 and proc.stdout.count("final model:") == 1
    ddp_run = tmp_path / "ddp" / "run"
    assert checkpoint_names(ddp_run) == ["step-0000006", "step-0000008"]
    assert (ddp_run / "checkpoints" / "step-0000008" / "rng-rank1.safetensors").is_file()

    # killed mid-checkpoint (rank 0 dies; the launcher stops rank 1) ...
    cut = tmp_path / "cut" / "run"
    cut_config = write_config(tmp_path / "cut" / "config.yaml", {**ddp_cfg, "output_dir": str(cut)})
    proc = run(launch_command(cut_config), MMALIGN_TEST_CRASH_AT="save:after_model@4")
    assert proc.returncode != 0
    assert checkpoint_names(cut) == [".tmp-step-0000004", "step-0000002"]
    # ... resumed with torchrun and stopped there by SIGTERM (the launcher passes it on: every
    # process agrees on the step, saves, exits) ...
    proc = run_until(torchrun_command(cut_config, "--resume"),
                     lambda: (cut / "checkpoints" / "step-0000004").is_dir(), sig=signal.SIGTERM)
    assert proc.stdout.count("stopped by signal at step") == 1, proc.stdout + proc.stderr[-3000:]
    stopped_at = int(proc.stdout.split("stopped by signal at step ")[1].split(";")[0])
    assert ckpt.latest_checkpoint(cut / "checkpoints").name == f"step-{stopped_at:07d}"
    # ... and resumed again with accelerate launch: bitwise the uninterrupted 2-process run
    proc = run(launch_command(cut_config, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_bitwise_equal(weights(cut / "final"), weights(ddp_run / "final"))
    assert metrics_text(cut) == metrics_text(ddp_run)
