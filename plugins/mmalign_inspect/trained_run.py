"""``mmalign eval CONFIG`` and ``mmalign score CONFIG``: a trained policy against its reference on
held-out data (the configured evaluators), or the implicit reward of every record."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mmalign import precision
from mmalign.config import Config
from mmalign_data.preparing import prepare_examples
from mmalign_data.reading import read_records
from mmalign.errors import ConfigError
from mmalign.evaluate import run_evaluators
from mmalign.batches import Batch
from mmalign_reference.strategies import FrozenCopy, is_peft, make_reference
from mmalign.scores import implicit_reward
from mmalign_runs.safe_files import write_atomic


@dataclass
class Loaded:
    """A trained policy, its reference and the held-out examples, ready to score."""

    reg: object
    spec: object
    reward: object
    policy: torch.nn.Module
    reference: object
    examples: list
    data_path: str
    checkpoint: Path
    accelerator: object  # device and autocast, as in training (mmalign.precision)


def load_trained_run(cfg: Config) -> Loaded:
    """The policy from ``eval.checkpoint`` (default ``output_dir/final``), the reference as the
    config describes it, and the examples of ``data.eval`` (else the held-out tail of data.train)."""
    from accelerate.utils import set_seed

    from mmalign.plugins import registry

    set_seed(cfg.seed)
    reg = registry()
    refuse_plugin_parts(cfg)
    spec = reg.get("losses", cfg.loss.name, "loss.name")
    reward = reg.get("rewards", cfg.model.reward, "model.reward")(cfg.model, cfg.data)
    checkpoint = Path(cfg.eval.checkpoint) if cfg.eval.checkpoint else Path(cfg.output_dir) / "final"
    if not checkpoint.exists():
        raise ConfigError(f"eval: no trained model at '{checkpoint}'. Train first "
                          f"(`mmalign train CONFIG`) or set eval.checkpoint.")
    if (checkpoint / "sharded").is_dir() or checkpoint.name == "sharded":
        raise ConfigError(f"eval.checkpoint: '{checkpoint}' is a sharded FSDP checkpoint, which holds no whole "
                          f"model. Evaluate the run's final/, or resume the run (with or without FSDP) to "
                          f"write one.")
    data_path = cfg.data.eval or cfg.data.train
    key = "data.eval" if cfg.data.eval else "data.train"
    examples, _ = prepare_examples(reward, read_records(data_path, cfg.data.format, key, cfg.data.columns),
                                   paired=spec.paired, strict=cfg.data.strict, path=data_path,
                                   duplicates=cfg.data.duplicates,
                                   allow_outside=cfg.data.allow_outside_paths)
    if cfg.data.eval is None and cfg.data.eval_size:
        examples = examples[-cfg.data.eval_size:]
    # Computed as training computed them: the same autocast, on the same device kind, trainable
    # weights in float32 (train.master_weights) and frozen ones in model.dtype.
    accelerator = precision.make_accelerator(precision.mixed_precision(cfg.model.dtype, cfg.train.precision),
                                             cpu=not torch.cuda.is_available())
    quiet = lambda message: None  # noqa: E731 (training already warned about model_dtype weights)
    policy = _trained_policy(reward, cfg, checkpoint)
    precision.set_master_weights(policy, cfg.train.master_weights, quiet)
    policy.to(accelerator.device).eval()
    if is_peft(policy):
        reference = make_reference("disable_adapters", policy, reward, None, spec.needs_reference,
                                   accelerator.device, accelerator.autocast)
    elif spec.needs_reference:
        path = cfg.reference.name_or_path
        if path:  # frozen in training too: stays in model.dtype
            model = reward.load_reference(path)
        else:  # training's copy of the policy, made after the upcast
            model = reward.load_policy()
            precision.set_master_weights(model, cfg.train.master_weights, quiet)
        reference = FrozenCopy(model.to(accelerator.device), reward, accelerator.autocast)
    else:
        reference = None
    return Loaded(reg, spec, reward, policy, reference, examples, data_path, checkpoint, accelerator)


def refuse_plugin_parts(cfg: Config) -> None:
    """eval and score rebuild the built-in references and read data.eval (or data.train) as a file:
    a plugin's strategy or data source would give rewards or records other than training's."""
    from mmalign_inspect.check import BUILT_IN_SOURCES

    if cfg.reference.strategy not in ("auto", "copy", "disable_adapters", "none"):
        raise ConfigError(f"reference.strategy: '{cfg.reference.strategy}' is a plugin's strategy, and mmalign eval "
                          f"and score rebuild only the built-in ones (auto, copy, disable_adapters): their rewards "
                          f"would not be training's. Evaluate during training (train.eval_every) instead.")
    if cfg.data.eval is None and cfg.data.source not in BUILT_IN_SOURCES:
        raise ConfigError(f"data.eval: mmalign eval and score read held-out records from a file, and data.source "
                          f"'{cfg.data.source}' is a plugin's source, which they do not call. Set data.eval to a "
                          f"data file.")


def _trained_policy(reward, cfg: Config, checkpoint: Path) -> torch.nn.Module:
    """The checkpoint's policy with the weights training computed with. A fully fine-tuned model
    trained on float32 master weights and was saved so; loaded in model.dtype its weights would be
    rounded (norms and embeddings compute with them outside autocast), so it loads in float32. An
    adapter's base stays in model.dtype, as it was frozen in training."""
    policy = reward.load_trained(checkpoint)
    adapters = is_peft(policy)
    if (cfg.train.master_weights != "float32" or cfg.model.dtype == "float32" or adapters
            or not dataclasses.is_dataclass(getattr(reward, "cfg", None))):
        return policy
    del policy
    as_saved = copy.copy(reward)
    as_saved.cfg = dataclasses.replace(reward.cfg, dtype="float32")
    return as_saved.load_trained(checkpoint)


def evaluate_config(cfg: Config) -> dict:
    """``mmalign eval``: run the configured evaluators; write ``output_dir/eval.json``."""
    run = load_trained_run(cfg)
    from mmalign.losses.objective import make_objective

    objective = make_objective(run.spec, beta=cfg.loss.beta, options=cfg.loss.options,
                               lookup=lambda name, key: run.reg.get("losses", name, key))
    results = run_evaluators(cfg, run.reg, run.reward, run.policy, run.reference, run.examples, objective,
                             run.accelerator.autocast)
    results = {"checkpoint": str(run.checkpoint), "data": run.data_path, **results}
    write_atomic(Path(cfg.output_dir) / "eval.json", json.dumps(results, indent=1))
    return results


def score_config(cfg: Config) -> list[dict]:
    """``mmalign score``: the implicit reward beta * (s_policy - s_ref) of every record's chosen
    and rejected response (beta * s_policy for reference-free losses); written to
    ``output_dir/scores.jsonl``, one object per record, in data order."""
    run = load_trained_run(cfg)
    beta, rows = cfg.loss.beta, []
    with torch.no_grad():
        for start in range(0, len(run.examples), cfg.eval.batch_size):
            chunk = run.examples[start:start + cfg.eval.batch_size]
            batch = run.reward.collate(chunk, torch.Generator().manual_seed(cfg.seed + start))
            batch = Batch(run.reward.encode(run.reward.to_device(batch, run.accelerator.device)))
            with run.accelerator.autocast():
                pol = run.reward.score(run.policy, batch.data)
            ref = run.reference.scores(batch) if run.reference else None
            rewards = implicit_reward(pol.sums, ref.sums if ref else None, beta)
            r_c = rewards[:, 0]
            r_r = rewards[:, 1] if pol.k > 1 else None
            for i, e in enumerate(chunk):
                row = {"record": e.where, "reward_chosen": float(r_c[i])}
                if r_r is not None:
                    row.update(reward_rejected=float(r_r[i]), margin=float(r_c[i] - r_r[i]))
                rows.append(row)
    write_atomic(Path(cfg.output_dir) / "scores.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows
