"""Exact resume after real kills: ``mmalign train`` runs as a subprocess, dies (SIGKILL at named
points of a checkpoint save, SIGKILL from outside at an arbitrary moment, SIGTERM), and
``--resume`` must end with final weights bitwise identical to an uninterrupted run (every
safetensors file byte for byte, metadata included), and the same metrics.jsonl. Parametrized by modality (a new one is one entry in train_processes.MODALITIES).

The deterministic kills use the test hook MMALIGN_TEST_CRASH_AT of plugins/mmalign_runs/checkpoint.py.
"""

from __future__ import annotations

import signal

import pytest
import torch
from conftest import base_config
from train_processes import (
    MODALITIES,
    assert_bitwise_equal,
    checkpoint_names,
    killed,
    metrics_text,
    modality_config,
    run,
    run_until,
    train_command,
    weights,
    write_config,
)

from mmalign_runs import checkpoint as ckpt

# log_every does not divide save_every, so a resumed run must also restore the metrics of the
# steps logged in no row yet; warmup + linear decay make the scheduler state matter.
TRAIN = {"max_steps": 16, "save_every": 2, "keep_last": 2, "log_every": 3, "warmup_steps": 2,
         "lr_scheduler": "linear"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """modality -> run directory of one uninterrupted run (shared by the tests of this module)."""
    runs = {}

    def get(modality):
        if modality not in runs:
            base = tmp_path_factory.mktemp(f"straight-{modality}")
            config = write_config(base / "config.yaml", modality_config(modality, base / "run", **TRAIN))
            proc = run(train_command(config))
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[modality] = base / "run"
        return runs[modality]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("modality", MODALITIES)
def test_killed_at_every_kind_of_point_resumes_bitwise(modality, uninterrupted, tmp_path):
    """One run killed five times in a row, each time in a different way, resumed each time."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", modality_config(modality, run_dir, **TRAIN))
    train, resume = train_command(config), train_command(config, "--resume")
    ckpts = run_dir / "checkpoints"

    # 1. Right after the first checkpoint is complete (renamed), before anything else.
    proc = run(train, MMALIGN_TEST_CRASH_AT="save:after_rename@2")
    assert killed(proc), proc.stderr[-3000:]
    assert checkpoint_names(run_dir) == ["step-0000002"]

    # 2. In the middle of writing a checkpoint: the model is written, the optimizer is not.
    proc = run(resume, MMALIGN_TEST_CRASH_AT="save:after_model@4")
    assert killed(proc), proc.stderr[-3000:]
    assert checkpoint_names(run_dir) == [".tmp-step-0000004", "step-0000002"]
    assert not (ckpts / ".tmp-step-0000004" / "trainer_state.json").exists()
    assert ckpt.latest_checkpoint(ckpts) == ckpts / "step-0000002"  # the partial one is ignored

    # 3. Everything written and flushed, but not yet renamed: still not a checkpoint.
    proc = run(resume, MMALIGN_TEST_CRASH_AT="save:before_rename@6")
    assert killed(proc), proc.stderr[-3000:]
    assert (ckpts / ".tmp-step-0000006" / "trainer_state.json").exists()
    assert checkpoint_names(run_dir) == [".tmp-step-0000006", "step-0000002", "step-0000004"]

    # 4. SIGKILL from outside at whatever moment follows the step-8 checkpoint; then a metrics
    #    line cut short, as a kill in the middle of a write leaves it.
    proc = run_until(resume, lambda: (ckpts / "step-0000008").is_dir(), sig=signal.SIGKILL)
    assert killed(proc), proc.stderr[-3000:]
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "loss": 0.6')

    # 5. SIGTERM: the run saves a checkpoint where it stands and exits with 130. It is sent once
    #    the resumed run has written a checkpoint of its own, so it lands inside the training loop.
    resumed_from = int(ckpt.latest_checkpoint(ckpts).name.split("-")[1])
    assert resumed_from + 2 < TRAIN["max_steps"], "the outside kill landed too late to go on"
    proc = run_until(resume, lambda: (ckpts / f"step-{resumed_from + 2:07d}").is_dir(),
                     sig=signal.SIGTERM)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "stopped by signal at step" in proc.stdout
    stopped_at = int(proc.stdout.split("stopped by signal at step ")[1].split(";")[0])
    assert resumed_from + 2 <= stopped_at < TRAIN["max_steps"]
    assert ckpt.latest_checkpoint(ckpts).name == f"step-{stopped_at:07d}"

    proc = run(resume)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {ckpts / f'step-{stopped_at:07d}'}" in proc.stdout
    straight = uninterrupted(modality)
    assert_bitwise_equal(weights(run_dir / "final"), weights(straight / "final"))
    assert_same_safetensors_bytes(run_dir, straight)
    assert metrics_text(run_dir) == metrics_text(straight)
    assert checkpoint_names(run_dir) == checkpoint_names(straight)  # no temporary left behind


def assert_same_safetensors_bytes(a, b) -> None:
    """Every safetensors file of final/ and of the kept checkpoints, byte for byte (header and
    metadata included, not only the tensors)."""
    files = sorted(str(p.relative_to(b)) for p in b.rglob("*.safetensors"))
    assert files == sorted(str(p.relative_to(a)) for p in a.rglob("*.safetensors"))
    different = [f for f in files if (a / f).read_bytes() != (b / f).read_bytes()]
    assert not different, different


@pytest.mark.slow
@pytest.mark.parametrize("modality", MODALITIES)
def test_identical_runs_write_identical_bytes_under_another_hash_seed(modality, uninterrupted, tmp_path):
    """Same config and seed in a process with another PYTHONHASHSEED (set iteration order) and
    another safetensors hash-map order: the same metrics and byte-identical safetensors files."""
    straight = uninterrupted(modality)
    config = write_config(tmp_path / "config.yaml", modality_config(modality, tmp_path / "run", **TRAIN))
    proc = run(train_command(config), PYTHONHASHSEED="12345")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics_text(tmp_path / "run") == metrics_text(straight)
    assert_same_safetensors_bytes(tmp_path / "run", straight)


# --- fast unit tests of the pieces ---------------------------------------------------------------

def test_every_process_has_its_own_saved_generators(tmp_path):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    gens = [torch.Generator().manual_seed(r) for r in range(3)]
    states = [ckpt.rng_state(g) for g in gens]
    saved = ckpt.save_checkpoint(tmp_path, 1, save_model=lambda d: d.mkdir(), optimizer=opt,
                                 scheduler=sched, data_generator=gens[0], trainer_state={"step": 1},
                                 keep_last=1, rng_states=states)
    assert sorted(f.name for f in saved.glob("rng*")) == [
        "rng-rank1.safetensors", "rng-rank2.safetensors", "rng.safetensors"]
    expected = [torch.rand(3, generator=g) for g in gens]
    for rank in range(4):
        fresh = torch.Generator().manual_seed(100)
        state = ckpt.load_checkpoint(saved, load_model=lambda d: None, optimizer=opt,
                                     scheduler=sched, data_generator=fresh, rank=rank)
        if rank < 3:
            assert state["rng_restored"] and torch.equal(torch.rand(3, generator=fresh), expected[rank])
        else:  # more processes than when saved: this one keeps its own generator
            assert not state["rng_restored"]
            assert torch.equal(torch.rand(3, generator=fresh),
                               torch.rand(3, generator=torch.Generator().manual_seed(100)))


def test_same_config_and_seed_give_the_same_metrics(tmp_path, tokenizer_dir, pairs_file):
    from mmalign import train

    def metrics(name, seed):
        cfg = base_config(tmp_path / name, tokenizer_dir, pairs_file,
                          train={"max_steps": 3, "callbacks": []})
        cfg["seed"] = seed
        return metrics_text(train(cfg, log=lambda *a: None).output_dir)  # without the wall-clock time/*

    first = metrics("a", 0)
    assert metrics("b", 0) == first
    assert metrics("c", 1) != first  # the comparison can fail
