"""Atomic, verified checkpoints and exact resume.

A checkpoint is written into ``checkpoints/.tmp-step-N``, flushed to disk, then renamed to
``checkpoints/step-N`` in one ``os.replace``: a directory named ``step-N`` is always complete, and a
run killed while saving leaves only a temporary directory that is never picked up (and is removed
by the next save). ``keep_last`` renames an old checkpoint to ``.pruned-step-N`` before deleting it,
so a kill during the deletion never leaves a partial ``step-N`` either. Everything is safetensors or JSON: nothing written here is a pickle.

Layout of ``step-N/``: ``model/`` (the plugin's ``save``: loads with plain ``from_pretrained``),
``optimizer.safetensors`` (or, for a sharded FSDP2 run, ``sharded/``: model and optimizer state,
one safetensors file per process, see :mod:`mmalign_runs.sharded_state`) + ``trainer_state.json``
(step, data position, scheduler, optimizer hyper-parameters), ``rng.safetensors`` (every random
generator; under multi-process training ``rng-rank{r}.safetensors`` holds those of process r > 0),
``run_identity.json`` (the run's id and settings, see :mod:`mmalign_runs.run_identity`),
``source.safetensors`` when the online source keeps tensors of its own (a PPO critic and its
optimizer) and, written last, ``manifest.json``: the sha256 of every other file. Before a checkpoint is trusted (:func:`find_resume_checkpoint`) every file is
checked against it: a damaged checkpoint is passed over for the newest intact one (with a message
naming the bad file), and a file the manifest does not list (a planted pickle, say) is refused, as
is any file that is not safetensors, JSON or tokenizer text (:data:`SAFE_SUFFIXES`) even if listed.

Every safetensors file written is made byte-reproducible (:func:`canonical_safetensors`: the
header's metadata keys sorted), so identical runs write identical bytes.

Test hook: ``MMALIGN_TEST_CRASH_AT=POINT[@STEP]`` SIGKILLs the process at a named point of a save
(``save:after_model``, ``save:after_optimizer``, ``save:before_rename``, ``save:after_rename``), so
tests can kill a run in the middle of writing a checkpoint deterministically. Unset, it does nothing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmalign.errors import ConfigError
from mmalign_runs.checkpoint_verify import (IDENTITY, MANIFEST, STEP_DIR, find_resume_checkpoint,  # noqa: F401
                                            last_intact, latest_checkpoint, list_checkpoints, rng_file,
                                            run_id_of, verify_checkpoint)
from mmalign_runs.optimizer_state import load_optimizer, optimizer_tensors
from mmalign_runs.run_identity import file_sha256
from mmalign_runs.safe_files import fsync_dir, fsync_tree, writing
from mmalign_runs.sharded_state import SHARDED_DIR

CRASH_ENV = "MMALIGN_TEST_CRASH_AT"
SOURCE_FILE = "source.safetensors"


def _test_crash_point(point: str, step: int) -> None:
    """Test hook (see the module docstring): die here, as a power cut or OOM-killer would."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, at = wanted.partition("@")
    if name == point and (not at or int(at) == step):
        os.kill(os.getpid(), signal.SIGKILL)


def rng_state(data_generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {
        "torch": torch.get_rng_state(),
        "data_generator": data_generator.get_state(),
        "python": torch.tensor(list(json.dumps(random.getstate()).encode()), dtype=torch.uint8),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{i}"] = s
    return state


def restore_rng(state: dict[str, torch.Tensor], data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data_generator"])
    py = json.loads(bytes(state["python"].tolist()).decode())
    random.setstate((py[0], tuple(py[1]), py[2]))
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state[k] for k in sorted(state) if k.startswith("cuda.")])


def canonical_safetensors(path: Path) -> None:
    """Rewrite the header of a safetensors file with its ``__metadata__`` keys sorted. The
    writer (Rust) keeps metadata in a hash map whose order changes from one process to the next,
    so two identical runs would otherwise write different bytes (e.g. diffusers' LoRA files, whose
    metadata has two keys). Same keys, same length: only the order in the header changes."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or len(meta) < 2:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        new = json.dumps({"__metadata__": header.pop("__metadata__"), **header},
                         separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) > size:  # cannot happen for a re-ordering; leave the file as written
            return
        f.seek(8)
        f.write(new + b" " * (size - len(new)))


def _write_manifest(directory: Path, step: int) -> None:
    files = {str(p.relative_to(directory)): file_sha256(p)
             for p in sorted(directory.rglob("*")) if p.is_file()}
    (directory / MANIFEST).write_text(json.dumps({"format": 1, "step": step, "files": files},
                                                 indent=1, sort_keys=True))


def staging_dir(root: Path, step: int) -> Path:
    """The temporary directory a checkpoint of ``step`` is written into before its rename."""
    return root / f".tmp-step-{step:07d}"


def start_checkpoint(root: Path, step: int) -> Path:
    """Create the (empty) staging directory of ``step``, removing what an interrupted save left."""
    tmp = staging_dir(root, step)
    with writing(root, "write a checkpoint"):
        root.mkdir(parents=True, exist_ok=True)
        for stale in [*root.glob(".tmp-step-*"), *root.glob(".pruned-step-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    return tmp


def save_checkpoint(root: Path, step: int, *, save_model, optimizer, scheduler,
                    data_generator: torch.Generator, trainer_state: dict, keep_last: int,
                    rng_states: list[dict[str, torch.Tensor]] | None = None,
                    identity_json: str = "{}", source_tensors: dict | None = None,
                    sharded: dict | None = None) -> Path:
    """Write ``root/step-{step}`` atomically, with its manifest; then keep only the newest
    ``keep_last`` checkpoints of this run (same ``run_id`` in ``identity_json``).

    ``rng_states``: the :func:`rng_state` of every process (index = rank), gathered by the caller
    under multi-process training; default: this process's only. ``sharded``: the model and
    optimizer state were already written into ``sharded/`` of :func:`start_checkpoint`'s directory
    by every process (:func:`mmalign_runs.sharded_state.save_sharded`, which returned this dict); then
    ``save_model`` and ``optimizer`` are not used. A failed write (full disk, read-only folder)
    removes the partial checkpoint and raises a ConfigError naming the path."""
    final = root / f"step-{step:07d}"
    tmp = staging_dir(root, step)
    try:
        with writing(root, "write a checkpoint"):
            if sharded is None:
                start_checkpoint(root, step)
            _write_files(tmp, step, save_model, optimizer, scheduler, data_generator, trainer_state,
                         rng_states, identity_json, source_tensors, sharded)
            _test_crash_point("save:before_rename", step)
            replaced = None
            if final.exists():  # the same step again (SIGTERM right after a periodic save; a resume)
                replaced = _move_old_aside(final)
            os.replace(tmp, final)
            fsync_dir(root)
            if replaced is not None:  # only once the new one is in place: a crash never leaves neither
                shutil.rmtree(replaced, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _test_crash_point("save:after_rename", step)
    run_id = json.loads(identity_json).get("run_id")
    own = [p for p in list_checkpoints(root) if run_id_of(p) == run_id]
    for old in own[:-keep_last]:
        # Renamed first (one atomic step), then deleted: a kill in the middle of the deletion leaves
        # a ``.pruned-`` folder that the next save removes, never a ``step-N`` husk.
        pruned = old.with_name(f".pruned-{old.name}")
        os.replace(old, pruned)
        shutil.rmtree(pruned, ignore_errors=True)
    return final


def _write_files(tmp: Path, step: int, save_model, optimizer, scheduler, data_generator,
                 trainer_state: dict, rng_states, identity_json: str, source_tensors, sharded) -> None:
    if sharded is None:
        save_model(tmp / "model")
    _test_crash_point("save:after_model", step)
    if sharded is None:
        tensors, opt_meta = optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    else:
        opt_meta = sharded
    for rank, rng in enumerate(rng_states or [rng_state(data_generator)]):
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / rng_file(rank)))
    _test_crash_point("save:after_optimizer", step)
    state = dict(trainer_state, optimizer=opt_meta, scheduler=scheduler.state_dict())
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    (tmp / IDENTITY).write_text(identity_json)
    if source_tensors:  # what an online source keeps of its own (a PPO critic and its optimizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in source_tensors.items()}, str(tmp / SOURCE_FILE))
    for path in sorted(tmp.rglob("*.safetensors")):
        canonical_safetensors(path)
    _write_manifest(tmp, step)  # last: a checkpoint without one is incomplete
    fsync_tree(tmp)


def _move_old_aside(path: Path) -> Path | None:
    """Make way for a new save of the same step. An intact old one is renamed ``step-N.replaced``
    and returned, to be deleted once the new one is in place (it holds the same step of the same
    run); a damaged one (passed over by a resume) is kept for inspection as ``step-N.damaged``.
    Neither name is ever taken for a checkpoint."""
    try:
        damaged = isinstance(verify_checkpoint(path), str)
    except ConfigError:  # holds a file mmalign did not write
        damaged = True
    suffix = ".damaged" if damaged else ".replaced"
    aside, n = path.with_name(path.name + suffix), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}{suffix}-{n}"), n + 1
    os.replace(path, aside)
    return None if damaged else aside


def load_checkpoint(path: Path, *, load_model, optimizer, scheduler,
                    data_generator: torch.Generator, rank: int = 0, state: dict | None = None,
                    load_sharded=None) -> dict:
    """Restore model weights, optimizer, scheduler and this process's RNGs; return the trainer
    state (``state``: already read by :func:`verify_checkpoint`). A process with no saved RNGs
    (more processes than when saved) keeps its own, and the returned state has
    ``"rng_restored": False``. Weights or optimizer state that do not fit the model: ConfigError.
    A checkpoint of sharded state (``sharded/``) is loaded by ``load_sharded(directory, meta)``
    (every process calls this function then); one with ``model/`` by ``load_model``, which is
    None when the run is sharded and cannot take whole weights."""
    state = dict(state) if state is not None else json.loads((path / "trainer_state.json").read_text())
    sharded = state["optimizer"] if "sharded" in state["optimizer"] else None
    if sharded is None and load_model is None:
        raise ConfigError(f"--resume: {path} was written by an unsharded run (model/ holds whole "
                          f"weights), and this run shards the model (FSDP). Resume it without FSDP "
                          f"(DDP or one process), or start a new run.")
    try:
        if sharded is not None:
            load_sharded(path / SHARDED_DIR, sharded)
        else:
            load_model(path / "model")
            load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except ConfigError:
        raise
    except Exception as err:  # a shape or key mismatch from torch / transformers / peft
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--resume: {path} does not fit the model of this config ({first}). "
                          f"Resume with the model settings (size, LoRA) it was written with, or "
                          f"start a new run.") from err
    if (path / SOURCE_FILE).is_file():
        state["source_tensors"] = load_file(str(path / SOURCE_FILE))
    rng_path = path / rng_file(rank)
    state["rng_restored"] = rng_path.is_file()
    if state["rng_restored"]:
        restore_rng(load_file(str(rng_path)), data_generator)
    return state


def save_final(save_model, final: Path) -> None:
    """Write the trained model into ``.tmp-final``, make its safetensors byte-reproducible, then
    swap it in for ``final``; a failed write leaves any previous ``final`` in place."""
    tmp, old = final.with_name(".tmp-final"), final.with_name(".old-final")
    try:
        with writing(final, "write the final model"):
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(tmp)
            for path in sorted(tmp.rglob("*.safetensors")):
                canonical_safetensors(path)
            if final.exists():
                final.replace(old)
            tmp.replace(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def with_final_files(save_model, cfg, history: list[dict]):
    """``save_model`` followed by every registered final-file writer (``mmalign_register_final_files``:
    the model card), for :func:`save_final`, so their files appear with the model."""
    from mmalign.config import to_dict
    from mmalign.plugins import registry

    reg = registry()
    writers = [reg.get("final_files", name) for name in reg.names("final_files")]

    def save(directory: Path) -> None:
        save_model(directory)
        for write in writers:
            write(directory, to_dict(cfg), history)

    return save
