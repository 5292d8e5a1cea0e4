"""Reference scores computed once and reused (``reference.cache: memory | disk``).

With a frozen reference, s_ref of a record never changes: scoring it again every epoch (or in
every run with the same reference and data) is wasted work. ``CachedReference`` scores every
training example once before training, in batches, and answers later calls from the cache.
``disk`` also stores the scores as safetensors under ``reference.cache_dir``, keyed by a
fingerprint of the reference model, the data, the tokenization settings and the plugin, so another
run (or a resumed one) with the same fingerprint skips the pass.

Only for plugins whose batches are deterministic (``deterministic_collate = True``): text, VLM
(without mDPO's random corruptions), and diffusion with ``model.options.noise: per_example`` (each
pair's noise and timestep fixed); diffusion's default per-step noise makes reference scores single-use.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmalign.batches import Batch
from mmalign.errors import ConfigError
from mmalign.scores import Scores


def fingerprint(cfg, data_files: list[str], content: str = "") -> str:
    """Hash of everything the reference scores depend on. ``content``: the plugin's hash of what
    the records point to outside the data files (images), so an edited image is not served
    scores of its old version."""
    import dataclasses

    h = hashlib.sha256(content.encode())
    ref_model = cfg.reference.name_or_path or cfg.model.name_or_path
    h.update(json.dumps({
        "reward": cfg.model.reward, "reference": ref_model, "tiny": cfg.model.tiny,
        "seed": cfg.seed if ref_model is None else None, "dtype": cfg.model.dtype,
        "tokenizer": cfg.model.tokenizer, "options": cfg.model.options,
        # the modality plugin's data.* keys (how records become tokens: lengths, truncation)
        "data_options": dataclasses.asdict(cfg.data.options),
        "precision": cfg.train.precision,
    }, sort_keys=True, default=str).encode())
    for path in ([ref_model] if ref_model and Path(ref_model).is_dir() else []):
        for f in sorted(Path(path).glob("*.safetensors")):  # weights change -> scores change
            h.update(f.name.encode() + str(f.stat().st_size).encode() + str(f.stat().st_mtime_ns).encode())
    for path in data_files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:24]


class CachedReference:
    """Wraps a reference strategy; scores of training batches come from a per-example table
    filled once (looked up by ``Batch.index``); other batches go to the strategy."""

    name = "cache"

    def __init__(self, inner: Any, plugin: Any, examples: list, *, batch_size: int,
                 device: torch.device, path: Path | None = None, log=print):
        self.inner = inner
        if path is not None and path.is_file():
            self.table = load_file(str(path))
            log(f"reference scores: loaded {len(examples)} from {path}")
            return
        columns: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(examples), batch_size):
            data = plugin.collate(examples[start:start + batch_size], torch.Generator())
            scores = inner.scores(Batch(plugin.encode(plugin.to_device(data, device))))
            for key, value in _columns(scores).items():
                columns.setdefault(key, []).append(value.detach().float().cpu())
        self.table = {k: torch.cat(v) for k, v in columns.items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            save_file(self.table, str(tmp))
            tmp.replace(path)
            log(f"reference scores: computed {len(examples)}, saved to {path}")

    def scores(self, batch: Batch, per_unit: bool = False) -> Scores:
        if batch.index is None or per_unit:  # held-out data; per-unit scores are not cached
            return self.inner.scores(batch, per_unit=per_unit)
        rows = batch.index
        device = _device_of(batch.data)
        get = lambda k: self.table[k][rows].to(device)  # noqa: E731
        extras = {k.split("/", 1)[1]: get(k) for k in self.table if k.startswith("extras/")}
        return Scores(get("sums"), get("units"), extras=extras)


def _columns(scores: Scores) -> dict[str, torch.Tensor]:
    out = {"sums": scores.sums, "units": scores.units}
    out.update({f"extras/{k}": v for k, v in scores.extras.items()})
    return out


def _device_of(batch: Any) -> torch.device:
    for value in vars(batch).values():
        if torch.is_tensor(value):
            return value.device
    return torch.device("cpu")


def cache_reference(run: Any) -> CachedReference:
    """``reference.cache`` (memory | disk): the run's reference wrapped in a cache that scores every
    training example once, now (registered as ``cache``; the run calls it after the store starts)."""
    cfg = run.cfg
    if run.objective.spec.extras:
        raise ConfigError(f"reference.cache: loss '{run.objective.spec.name}' uses scores that depend on "
                          f"the whole batch (e.g. KTO's mismatched pairs), which cannot be cached per "
                          f"record. Set reference.cache: none.")
    if not run.plugin.deterministic_collate:
        raise ConfigError(f"reference.cache: the '{cfg.model.reward}' plugin draws randomness per "
                          f"batch, so its reference scores cannot be reused. Set reference.cache: none.")
    path = None
    if cfg.reference.cache == "disk":
        root = Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else run.out / "reference_cache"
        content = run.plugin.content_fingerprint(run.stream.examples)
        key = fingerprint(cfg, [cfg.data.train], content)
        path = root / f"ref-{key}-rank{run.accelerator.process_index}.safetensors"
    return CachedReference(run.reference, run.plugin, run.stream.examples, batch_size=cfg.eval.batch_size,
                           device=run.accelerator.device, path=path, log=run.log)
