"""A catalogue of faults of runs, checkpoints and output folders, each run through
``mmalign train`` (``mmalign.cli.main`` in process; real subprocesses only for kills and locks).

Every case asserts its exit code, that the message names the place (the file, folder, key or
process), and that nothing already written was lost or replaced (a sha256 snapshot of the run
folder before and after). The shared starting point is one finished tiny text run with
checkpoints at steps 2 and 4, copied into each test's folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEMO_DATA, base_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train_processes.py
from train_processes import assert_bitwise_equal, metrics_text, process_env, train_command, weights  # noqa: E402

from mmalign_runs import checkpoint as ckpt  # noqa: E402
from mmalign.cli import main  # noqa: E402
from mmalign_runs.output_dir import LOCK_NAME  # noqa: E402

TRAIN = {"max_steps": 4, "save_every": 2, "keep_last": 9, "callbacks": [], "log_every": 1}
STEP2, STEP4 = "checkpoints/step-0000002", "checkpoints/step-0000004"


# --- helpers ---------------------------------------------------------------------------------------

def make_config(tmp_path: Path, run_dir: Path, data=None, name="config.yaml", **sections) -> Path:
    cfg = base_config(tmp_path, DEMO_DATA / "tokenizer", data or DEMO_DATA / "train.jsonl")
    cfg["output_dir"] = str(run_dir)
    cfg["train"].update(TRAIN)
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and everything printed (stdout + stderr)."""
    code = main(["train", *map(str, argv)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out + out.err


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_kept(before: dict[str, str], root: Path, *, moved_to: Path | None = None) -> None:
    """Every file of ``before`` is still there (under ``moved_to`` if given), byte for byte."""
    after = snapshot(moved_to or root)
    lost = [k for k, digest in before.items() if after.get(k) != digest]
    assert not lost, f"lost or changed: {lost[:5]}"


def rehash(checkpoint: Path) -> None:
    """Rewrite a checkpoint's manifest after an edit (a consistent but wrong checkpoint)."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {k: ckpt.file_sha256(checkpoint / k) for k in manifest["files"]}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (checkpoints at 2 and 4, final/) and its config."""
    from mmalign import train
    from mmalign.config import load_config

    base = tmp_path_factory.mktemp("finished")
    config = make_config(base, base / "run")
    train(load_config(config), log=lambda *a: None)
    return base / "run"


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run in this test's folder, and its config: (run_dir, config)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir, make_config(tmp_path, run_dir)


def resume_from_step2(run_dir: Path) -> None:
    """Make the run look stopped at step 2: drop step 4 and final/, as a killed run leaves it."""
    shutil.rmtree(run_dir / STEP4)
    shutil.rmtree(run_dir / "final")


# --- a new run into a folder ------------------------------------------------------------------------

def test_new_run_into_a_used_folder_refuses(run, capsys):
    run_dir, config = run
    before = snapshot(run_dir)
    code, out = cli(capsys, config)
    assert code == 2
    assert str(run_dir) in out and "--resume" in out and "--overwrite" in out
    assert_kept(before, run_dir)


def test_overwrite_moves_the_old_run_aside_and_deletes_nothing(run, capsys):
    run_dir, config = run
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--overwrite", "--set", "seed=1")
    assert code == 0, out
    aside = [p for p in run_dir.parent.iterdir() if p.name.startswith("run.previous-")]
    assert len(aside) == 1 and str(aside[0]) in out
    assert_kept(before, run_dir, moved_to=aside[0])
    assert (run_dir / "final").is_dir() and not (run_dir / LOCK_NAME).exists()


def test_overwrite_with_bad_data_leaves_the_old_run_in_place(run, tmp_path, capsys):
    """The data is checked before --overwrite moves anything: a refused run displaces nothing."""
    run_dir, _ = run
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    config = make_config(tmp_path, run_dir, data=bad, name="bad.yaml")
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--overwrite")
    assert code == 2 and "bad.jsonl:1" in out
    assert_kept(before, run_dir)
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith("run.previous-")]


@pytest.mark.parametrize("command", [["demo", "text", "--quick"], ["sweep", "--quick"]])
def test_demo_into_a_used_folder_refuses_and_keeps_it(tmp_path, capsys, command):
    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    (out_dir / "report.json").write_text("{}")
    before = snapshot(out_dir)
    code = main([*command, "--out", str(out_dir)])
    out = capsys.readouterr()
    assert code == 2 and str(out_dir) in out.err and "--overwrite" in out.err
    assert "Traceback" not in out.err
    assert_kept(before, out_dir)


def test_overwrite_together_with_resume_is_refused(run, capsys):
    run_dir, config = run
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--overwrite", "--resume")
    assert code == 2 and "--overwrite" in out and "--resume" in out
    assert_kept(before, run_dir)


def test_output_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    code, out = cli(capsys, make_config(tmp_path, target))
    assert code == 2 and str(target) in out and "output_dir" in out
    assert target.read_text() == "not a folder"


def test_output_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "run"
    code, out = cli(capsys, make_config(tmp_path, target))
    assert code == 2 and str(tmp_path / "file") in out
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_output_dir(tmp_path, capsys, monkeypatch):
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the refusal a read-only folder gives, simulated
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(target)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("mmalign_runs.run_identity.os.open", refuse)
    else:
        target.chmod(0o555)
    code, out = cli(capsys, make_config(tmp_path, target))
    target.chmod(0o755)
    assert code == 2 and str(target) in out and "writable" in out
    assert list(target.iterdir()) == []


# --- run identity on --resume -------------------------------------------------------------------------

@pytest.mark.parametrize("change, named", [
    ({"model": {"tiny": {"hidden_size": 64, "intermediate_size": 128}}}, "model.tiny.hidden_size"),
    ({"model": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}}, "model.lora"),
    ({"train": {"batch_size": 2}}, "train.batch_size"),
    ({"train": {"lr": 5e-4}}, "train.lr"),
    ({"seed": 7}, "seed"),
    ({"loss": {"name": "ipo"}}, "loss.name"),
])
def test_resume_refuses_a_checkpoint_of_other_settings(run, tmp_path, capsys, change, named):
    run_dir, _ = run
    resume_from_step2(run_dir)
    before = snapshot(run_dir)
    code, out = cli(capsys, make_config(tmp_path, run_dir, name="changed.yaml", **change), "--resume")
    assert code == 2, out
    assert named in out and str(run_dir / STEP2) in out and "--force-resume" in out
    assert_kept(before, run_dir)
    assert not (run_dir / "final").exists()


def test_resume_refuses_after_the_data_was_edited(run, tmp_path, capsys):
    run_dir, _ = run
    resume_from_step2(run_dir)
    lines = (DEMO_DATA / "train.jsonl").read_text().splitlines()
    edited = tmp_path / "train.jsonl"
    edited.write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # same records, another order
    before = snapshot(run_dir)
    code, out = cli(capsys, make_config(tmp_path, run_dir, data=edited, name="c2.yaml"), "--resume")
    assert code == 2 and "data.train (sha256)" in out
    assert_kept(before, run_dir)


def test_force_resume_goes_on_and_names_the_differences(run, tmp_path, capsys):
    run_dir, _ = run
    resume_from_step2(run_dir)
    before = snapshot(run_dir)
    config = make_config(tmp_path, run_dir, name="c2.yaml", train={"lr": 5e-4})
    code, out = cli(capsys, config, "--resume", "--force-resume")
    assert code == 0, out
    assert "--force-resume" in out and "train.lr" in out
    assert_kept({k: v for k, v in before.items() if k.startswith("checkpoints")}, run_dir)
    assert "lr: 0.0005" in (run_dir / "config.yaml").read_text()  # the config now used
    assert (run_dir / "final").is_dir()


def test_force_resume_into_a_model_of_another_size_is_an_error_not_a_traceback(run, tmp_path, capsys):
    run_dir, _ = run
    resume_from_step2(run_dir)
    before = snapshot(run_dir)
    config = make_config(tmp_path, run_dir, name="c2.yaml", model={"tiny": {"hidden_size": 64}})
    code, out = cli(capsys, config, "--resume", "--force-resume")
    assert code == 2 and "does not fit the model" in out and str(run_dir / STEP2) in out
    assert_kept(before, run_dir)


def test_force_resume_without_resume_is_refused(run, capsys):
    run_dir, config = run
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--force-resume")
    assert code == 2 and "--force-resume needs --resume" in out
    assert_kept(before, run_dir)


def test_extending_max_steps_is_the_same_run(run, capsys):
    run_dir, config = run
    before = {k: v for k, v in snapshot(run_dir).items() if not k.startswith(("final", "metrics", "config"))}
    code, out = cli(capsys, config, "--resume", "--set", "train.max_steps=6")
    assert code == 0, out
    assert f"resumed from {run_dir / STEP4}" in out
    assert_kept(before, run_dir)
    assert [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())] \
        == [1, 2, 3, 4, 5, 6]


def test_keep_last_deletes_only_this_runs_checkpoints(tmp_path):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    gen = torch.Generator().manual_seed(0)
    root = tmp_path / "checkpoints"

    def save(step, run_id):
        return ckpt.save_checkpoint(root, step, save_model=lambda d: d.mkdir(), optimizer=opt,
                                    scheduler=sched, data_generator=gen, keep_last=1,
                                    trainer_state={"step": step, "consumed": 0},
                                    identity_json=json.dumps({"run_id": run_id}))

    foreign = save(1, "other")
    foreign_files = snapshot(foreign)
    for step in (2, 3, 4):
        save(step, "mine")
    assert [c.name for c in ckpt.list_checkpoints(root)] == ["step-0000001", "step-0000004"]
    assert snapshot(foreign) == foreign_files


# --- damaged checkpoints: fall back to the newest intact one ----------------------------------------

def damage_truncate(c: Path) -> str:
    f = c / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return "optimizer.safetensors"


def damage_state_json(c: Path) -> str:
    (c / "trainer_state.json").write_text('{"step": 4, "consu')
    return "trainer_state.json"


def damage_state_types(c: Path) -> str:
    state = json.loads((c / "trainer_state.json").read_text())
    state["step"] = "four"
    (c / "trainer_state.json").write_text(json.dumps(state))
    rehash(c)
    return "trainer_state.json"


def damage_no_manifest(c: Path) -> str:
    (c / "manifest.json").unlink()
    return "manifest.json"


def damage_bad_manifest(c: Path) -> str:
    (c / "manifest.json").write_text("[1, 2")
    return "manifest.json"


def damage_model_bytes(c: Path) -> str:
    f = c / "model" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the weights: same size, another hash
    f.write_bytes(bytes(data))
    return "model.safetensors"


def damage_no_model_file(c: Path) -> str:
    (c / "model" / "model.safetensors").unlink()
    return "model.safetensors"


def damage_no_rng(c: Path) -> str:
    (c / "rng.safetensors").unlink()
    return "rng.safetensors"


def damage_no_identity(c: Path) -> str:
    (c / "run_identity.json").unlink()
    return "run_identity.json"


@pytest.mark.parametrize("damage", [damage_truncate, damage_state_json, damage_state_types,
                                    damage_no_manifest, damage_bad_manifest, damage_model_bytes,
                                    damage_no_model_file, damage_no_rng, damage_no_identity])
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_previous_one(run, finished, capsys, damage):
    run_dir, config = run
    shutil.rmtree(run_dir / "final")
    bad_file = damage(run_dir / STEP4)
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--resume")
    assert code == 0, out
    assert "passed over a damaged checkpoint" in out and bad_file in out and str(run_dir / STEP4) in out
    assert f"resumed from {run_dir / STEP2}" in out
    # the same steps 3 and 4 again, so the same final weights as the run that was never damaged
    assert_bitwise_equal(weights(run_dir / "final"), weights(finished / "final"))
    assert_kept({k: v for k, v in before.items() if k.startswith(STEP2)}, run_dir)
    damaged = {k.replace(STEP4, STEP4 + ".damaged"): v for k, v in before.items() if k.startswith(STEP4)}
    assert_kept(damaged, run_dir)  # kept for inspection, never overwritten


def test_every_checkpoint_damaged_is_an_error_naming_each(run, capsys):
    run_dir, config = run
    damage_truncate(run_dir / STEP4)
    damage_no_rng(run_dir / STEP2)
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--resume")
    assert code == 2
    assert str(run_dir / STEP4 / "optimizer.safetensors") in out
    assert str(run_dir / STEP2 / "rng.safetensors") in out
    assert_kept(before, run_dir)


def test_an_explicit_damaged_checkpoint_is_refused_without_falling_back(run, capsys):
    run_dir, config = run
    damage_truncate(run_dir / STEP4)
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--resume", run_dir / STEP4)
    assert code == 2 and str(run_dir / STEP4 / "optimizer.safetensors") in out
    assert_kept(before, run_dir)


@pytest.mark.parametrize("planted", ["model/pytorch_model.bin", "evil.pkl", "model/extra.pt",
                                     "model/notes.json"])
def test_a_file_mmalign_did_not_write_is_refused(run, capsys, planted):
    import pickle

    run_dir, config = run
    target = run_dir / STEP4 / planted
    target.write_bytes(pickle.dumps({"harmless": True}))
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--resume")
    assert code == 2 and str(target) in out and "manifest" in out
    assert_kept(before, run_dir)


def test_resume_with_no_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "never-ran"
    code, out = cli(capsys, make_config(tmp_path, run_dir), "--resume")
    assert code == 2 and str(run_dir / "checkpoints") in out and "without --resume" in out


@pytest.mark.parametrize("where", ["run folder", "a file", "missing"])
def test_resume_from_a_path_that_is_not_a_checkpoint(run, capsys, where):
    run_dir, config = run
    path = {"run folder": run_dir, "a file": run_dir / "metrics.jsonl",
            "missing": run_dir / "checkpoints" / "step-0000099"}[where]
    before = snapshot(run_dir)
    code, out = cli(capsys, config, "--resume", path)
    assert code == 2 and f"--resume {path}: not a checkpoint" in out
    assert_kept(before, run_dir)


def test_a_metrics_line_cut_short_is_dropped_and_the_run_goes_on(run, finished, capsys):
    run_dir, config = run
    resume_from_step2(run_dir)
    text = (run_dir / "metrics.jsonl").read_text()
    cut = text.index('{"step": 3')
    (run_dir / "metrics.jsonl").write_text(text[:cut + 25])  # row 3 cut mid-line, row 4 gone
    code, out = cli(capsys, config, "--resume")
    assert code == 0, out
    assert metrics_text(run_dir) == metrics_text(finished)  # without the wall-clock time/* keys


# --- non-finite weights and optimizer state -----------------------------------------------------------

def poison_step(monkeypatch, at: int, target: str):
    """From optimizer step ``at`` on, AdamW leaves a NaN in the first parameter (``weights``) or
    an infinity in its optimizer state only (``state``): what an overflowing update does."""
    real = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= at:
            first = self.param_groups[0]["params"][0]
            with torch.no_grad():
                if target == "weights":
                    first.view(-1)[0] = float("nan")
                else:
                    self.state[first]["exp_avg_sq"].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_weights_after_an_update_are_never_saved(tmp_path, capsys, monkeypatch, policy):
    run_dir = tmp_path / "run"
    poison_step(monkeypatch, 3, "weights")
    code, out = cli(capsys, make_config(tmp_path, run_dir, train={"on_nonfinite": policy}))
    assert code == 3
    assert "Non-finite weights after the update at step 3" in out
    assert f"{run_dir / STEP2}, is intact" in out
    if policy == "skip":
        assert "skip cannot undo" in out
    assert not (run_dir / "final").exists() and not (run_dir / STEP4).exists()
    assert all(torch.isfinite(v).all() for v in weights(run_dir / STEP2).values())
    assert not isinstance(ckpt.verify_checkpoint(run_dir / STEP2), str)


def test_nan_weights_at_step_1_leave_no_checkpoint_and_say_so(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    poison_step(monkeypatch, 1, "weights")
    code, out = cli(capsys, make_config(tmp_path, run_dir, train={"on_nonfinite": "skip"}))
    assert code == 3 and "no intact checkpoint was written yet" in out
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "final").exists()


def test_non_finite_optimizer_state_is_caught_when_saving(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    poison_step(monkeypatch, 3, "state")
    code, out = cli(capsys, make_config(tmp_path, run_dir))
    assert code == 3 and "exp_avg_sq" in out and "saving a checkpoint" in out
    assert f"{run_dir / STEP2}, is intact" in out
    assert not (run_dir / STEP4).exists() and not (run_dir / "final").exists()


def test_a_huge_learning_rate_never_writes_non_finite_weights(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out = cli(capsys, make_config(tmp_path, run_dir, train={"lr": 1e30, "on_nonfinite": "skip",
                                                                  "save_every": 1}))
    assert code in (0, 3), out  # stopped (3) or, if every bad update was skipped, finished (0)
    for directory in [run_dir / "final", *ckpt.list_checkpoints(run_dir / "checkpoints")]:
        if directory.exists():
            assert all(torch.isfinite(v).all() for v in weights(directory).values()), directory


# --- the disk refuses ---------------------------------------------------------------------------------

def full_disk_at(monkeypatch, module: str, name: str, after: int = 0):
    """``module.name`` (a writer) raises ENOSPC from its call number ``after + 1`` on."""
    import importlib

    mod = importlib.import_module(module)
    real, calls = getattr(mod, name), {"n": 0}

    def writer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[-1] if args else ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, name, writer)


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    # the optimizer file and the rng file of step 2 write fine; step 4's optimizer file fails
    full_disk_at(monkeypatch, "mmalign_runs.checkpoint", "save_file", after=2)
    code, out = cli(capsys, make_config(tmp_path, run_dir))
    assert code == 2 and "disk is full" in out and str(run_dir / "checkpoints") in out
    assert "--resume" in out
    assert [c.name for c in ckpt.list_checkpoints(run_dir / "checkpoints")] == ["step-0000002"]
    assert not isinstance(ckpt.verify_checkpoint(run_dir / STEP2), str)
    assert not list((run_dir / "checkpoints").glob(".tmp-*")) and not (run_dir / "final").exists()


def test_disk_full_while_writing_final(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    real = ckpt.canonical_safetensors

    def fill_the_disk(path):  # final/'s weights are written, then the disk is full
        if ".tmp-final" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path)

    monkeypatch.setattr(ckpt, "canonical_safetensors", fill_the_disk)
    code, out = cli(capsys, make_config(tmp_path, run_dir))
    assert code == 2 and "disk is full" in out and str(run_dir / ".tmp-final") in out
    assert not (run_dir / "final").exists() and not (run_dir / ".tmp-final").exists()
    assert not isinstance(ckpt.verify_checkpoint(run_dir / STEP4), str)


def test_disk_full_while_appending_metrics(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    real_open = Path.open

    def open_(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    code, out = cli(capsys, make_config(tmp_path, run_dir))
    assert code == 2 and str(run_dir / "metrics.jsonl") in out and "disk is full" in out


# --- locks --------------------------------------------------------------------------------------------

def test_a_live_lock_holder_is_named(run, capsys):
    run_dir, config = run
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        before = snapshot(run_dir)
        code, out = cli(capsys, config, "--resume")
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and f"pid {holder.pid}" in out and str(run_dir / LOCK_NAME) in out
    assert_kept(before, run_dir)


def test_a_stale_lock_is_taken_over(run, capsys):
    run_dir, config = run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    code, out = cli(capsys, config, "--resume", "--set", "train.max_steps=5")
    assert code == 0, out
    assert f"left by a run that is gone (pid {dead.pid})" in out
    assert not (run_dir / LOCK_NAME).exists()  # released at the end


@pytest.mark.slow
def test_two_runs_started_into_one_folder(tmp_path):
    """The second run exits 2 naming the first one's pid; the first goes on alone (stopped by
    SIGTERM once the second has been refused: it saves and exits 130)."""
    import signal

    run_dir = tmp_path / "run"
    config = make_config(tmp_path, run_dir, train={"max_steps": 100000, "save_every": 0})
    first = subprocess.Popen(train_command(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=process_env())
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").exists():  # training has started
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    second = subprocess.run(train_command(config), capture_output=True, text=True, env=process_env())
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    assert f"pid {first.pid}" in second.stderr and str(run_dir / LOCK_NAME) in second.stderr
    assert first.returncode == 130, err[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # one run's rows, not two
    assert not (run_dir / LOCK_NAME).exists()


@pytest.mark.slow
def test_killed_during_a_save_then_a_new_run_with_overwrite_never_resumes_the_old_one(run, finished):
    """The reported failure: an old run's folder, a new run into it that dies, --resume. The old
    run's weights must never come back as the new run's final/."""
    run_dir, config = run
    seeded = make_config(run_dir.parent, run_dir, name="seed1.yaml", seed=1)
    proc = subprocess.run(train_command(seeded, "--overwrite"), capture_output=True, text=True,
                          env=process_env(MMALIGN_TEST_CRASH_AT="save:after_optimizer@4"))
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (run_dir / "checkpoints" / ".tmp-step-0000004").is_dir()  # the half-written save
    proc = subprocess.run(train_command(seeded, "--resume"), capture_output=True, text=True,
                          env=process_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resumed from {run_dir / STEP2}" in proc.stdout
    new, old = weights(run_dir / "final"), weights(finished / "final")
    assert any(not torch.equal(new[k], old[k]) for k in new)  # the new run's weights, not the old
    proc = subprocess.run(train_command(config, "--resume"), capture_output=True, text=True,
                          env=process_env())
    assert proc.returncode == 2 and "seed" in proc.stderr  # the old config cannot take it over


# --- reproducible bytes -------------------------------------------------------------------------------

def test_identical_runs_write_identical_safetensors_bytes(run, finished, capsys):
    run_dir, config = run
    shutil.rmtree(run_dir)
    code, out = cli(capsys, config)
    assert code == 0, out
    files = sorted(p.relative_to(finished) for p in finished.rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(run_dir) for p in run_dir.rglob("*.safetensors"))
    different = [f for f in files if (finished / f).read_bytes() != (run_dir / f).read_bytes()]
    assert not different, different


def test_safetensors_metadata_order_is_canonical(tmp_path):
    from safetensors.torch import save_file

    meta = {f"key{i}": str(i) for i in range(6)}
    written, canonical = set(), set()
    for i in range(8):  # the writer's hash-map order differs between calls
        path = tmp_path / f"{i}.safetensors"
        save_file({"b": torch.zeros(2), "a": torch.ones(3)}, str(path), metadata=meta)
        written.add(path.read_bytes())
        ckpt.canonical_safetensors(path)
        canonical.add(path.read_bytes())
    assert len(written) > 1  # what the fix is for: 720 orders of 6 keys
    assert len(canonical) == 1
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("a"), torch.ones(3))
