"""Which checkpoints exist, and whether one can be trusted: every file checked against the
manifest before anything is loaded (see :mod:`mmalign_runs.checkpoint` for the layout)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmalign.errors import ConfigError
from mmalign_runs.run_identity import file_sha256

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
IDENTITY = "run_identity.json"
# What a checkpoint may hold: tensors as safetensors, everything else JSON or the plain text that
# tokenizers and model cards save (vocab.txt, merges.txt, chat_template.jinja, README.md,
# SentencePiece's protobuf .model). Nothing that unpickles (.bin, .pt, .pkl, .ckpt, .npy, ...).
SAFE_SUFFIXES = frozenset({".safetensors", ".json", ".txt", ".jinja", ".md", ".model", ".tiktoken"})


def rng_file(rank: int) -> str:
    return "rng.safetensors" if rank == 0 else f"rng-rank{rank}.safetensors"


def run_id_of(path: Path) -> str | None:
    try:
        return json.loads((path / IDENTITY).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def list_checkpoints(root: Path) -> list[Path]:
    """Directories named ``step-N`` (renamed into place, so complete when written), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


# --- verification ------------------------------------------------------------------------------------

_STATE_TYPES = {"step": int, "consumed": int, "optimizer": dict, "scheduler": dict}


def _check_state(state) -> str | None:
    if not isinstance(state, dict):
        return "is not a JSON object"
    for key, kind in _STATE_TYPES.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            return f"'{key}' is {value!r}, expected {'a non-negative integer' if kind is int else 'an object'}"
    opt = state["optimizer"]
    if not isinstance(opt.get("param_groups"), list) or not isinstance(opt.get("scalars"), dict):
        return "'optimizer' lacks its 'param_groups' list or 'scalars' object"
    window = state.get("metrics_window", [])
    if not isinstance(window, list) or not all(isinstance(m, dict) for m in window):
        return "'metrics_window' is not a list of objects"
    return None


def verify_checkpoint(path: Path) -> tuple[dict, dict] | str:
    """(trainer state, run identity) of an intact checkpoint, else why not (naming the file).
    Raises ConfigError for a file that mmalign did not write (not in the manifest)."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        assert isinstance(files, dict)
    except FileNotFoundError:
        return f"{manifest_path} is missing (a checkpoint of an older mmalign, or tampered with)"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{manifest_path} is unreadable or not a manifest"
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} - {MANIFEST}
    foreign = sorted(present - set(files))
    if foreign:
        raise ConfigError(f"{path / foreign[0]}: this file is not in the checkpoint's manifest: "
                          f"mmalign did not write it and will not load it (only the safetensors "
                          f"and JSON files it wrote, checked by sha256). Remove it (and any other "
                          f"file you did not put there: {', '.join(foreign[:4])}), then resume again.")
    unsafe = sorted(name for name in files if Path(name).suffix.lower() not in SAFE_SUFFIXES)
    if unsafe:  # listed by an edited manifest: still not loaded
        raise ConfigError(f"{path / unsafe[0]}: mmalign loads only safetensors and JSON (and the "
                          f"tokenizer's text files) from a checkpoint, never a file of another kind "
                          f"(a pickle can run code), even one its manifest lists. Remove it and its "
                          f"line in {manifest_path}, then resume again.")
    sharded = any(name.startswith("sharded/") for name in files)  # FSDP2: model and optimizer state
    for name in ("trainer_state.json", rng_file(0), IDENTITY, *(() if sharded else ("optimizer.safetensors",))):
        if name not in files:
            return f"{path / name} is missing"
    if not sharded and not any(name.startswith("model/") for name in files):
        return f"{path / 'model'} holds no model files"
    for name, digest in sorted(files.items()):
        if name not in present:
            return f"{path / name} is missing"
        if file_sha256(path / name) != digest:
            return f"{path / name} is damaged (its sha256 differs from the manifest's)"
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        identity = json.loads((path / IDENTITY).read_text())
    except ValueError as err:
        return f"{path}: a JSON file does not parse ({err})"
    problem = _check_state(state)
    if problem:
        return f"{path / 'trainer_state.json'}: {problem}"
    return state, identity if isinstance(identity, dict) else {}


def last_intact(root: Path) -> Path | None:
    """The newest checkpoint under ``root`` that passes verification (the one --resume takes); a
    damaged or tampered newer one is passed over, as --resume does, not reported."""
    for path in reversed(list_checkpoints(root)):
        try:
            if not isinstance(verify_checkpoint(path), str):
                return path
        except ConfigError:  # holds a file mmalign did not write: --resume refuses it too
            continue
    return None


def find_resume_checkpoint(root: Path, explicit: Path | None, log) -> tuple[Path, dict, dict]:
    """The checkpoint to resume from, verified: ``explicit`` or else the newest intact one under
    ``root`` (a damaged newer one is passed over with a message). Exit 2 when there is none."""
    if explicit is not None:
        if not (explicit / "trainer_state.json").is_file() and not (explicit / MANIFEST).is_file():
            raise ConfigError(f"--resume {explicit}: not a checkpoint directory (one holds "
                              f"manifest.json, trainer_state.json and model/; they are under "
                              f"OUTPUT_DIR/checkpoints/step-N). Pass one of those, or --resume alone.")
        found = verify_checkpoint(explicit)
        if isinstance(found, str):
            raise ConfigError(f"--resume: {found}. Pass another checkpoint, or --resume alone "
                              f"to take the newest intact one.")
        return explicit, *found
    problems = []
    for path in reversed(list_checkpoints(root)):
        found = verify_checkpoint(path)
        if not isinstance(found, str):
            for problem in problems:
                log(f"warning: passed over a damaged checkpoint: {problem}")
            return path, *found
        problems.append(found)
    if problems:
        raise ConfigError(f"--resume: no intact checkpoint in {root}: " + "; ".join(problems)
                          + ". Start without --resume (with --overwrite), or restore the files.")
    raise ConfigError(f"--resume: no complete checkpoint in {root}. Start without --resume, or pass a "
                      f"checkpoint directory.")
