"""YAML -> typed config. Unknown keys, wrong types and bad values fail with the key's dotted
name, the valid keys or the expected type, and the fix (exit code 2 from the CLI)."""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from mmalign.config_file import apply_overrides, parse_override
from mmalign.config_types import _build


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Union[str, list[str]] = "all-linear"


@dataclass
class ModelConfig:
    reward: str = "text"  # the modality plugin: text, vlm, diffusion, or a third-party name
    name_or_path: Optional[str] = None  # local path or hub id, loaded with from_pretrained
    tiny: Optional[dict] = None  # architecture kwargs for a model built from a config (tests/demos)
    tokenizer: Optional[str] = None  # defaults to name_or_path
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    lora: Optional[LoraConfig] = None
    options: dict = field(default_factory=dict)  # plugin-specific options, checked by the plugin


@dataclass
class ReferenceConfig:
    # a registered reference strategy (mmalign_register_references): auto ("disable_adapters" with
    # LoRA: no second copy of the weights; else "copy"), copy, disable_adapters, or a plugin's; none
    strategy: str = "auto"
    name_or_path: Optional[str] = None  # a different reference model (strategy copy)
    # Score every training record with the reference once and reuse it (text, VLM): memory, or
    # disk too (reusable by later runs with the same reference, data and settings).
    cache: Literal["none", "memory", "disk"] = "none"
    cache_dir: Optional[str] = None  # default: output_dir/reference_cache


@dataclass
class NoDataOptions:
    """``data.options`` of a modality plugin that declares no ``data.*`` keys of its own."""


@dataclass
class DataConfig:
    """The modality-neutral ``data.*`` keys. A modality plugin's own keys (the text plugin's
    max_length, truncation_mode, ...) are written flat beside them in YAML; load_config checks
    them against the ``data_options`` dataclass of the reward named by model.reward and stores the
    instance in ``options`` (see mmalign/plugin_data_options.py)."""
    train: Optional[str] = None
    eval: Optional[str] = None
    # a registered data source (mmalign_register_data_sources); auto: "prompts" for an online
    # algorithm, "streamed" with data.streaming, else "files"
    source: str = "auto"
    format: str = "auto"  # a registered dataset format; auto picks by file suffix
    strict: bool = False  # turn every skipped record into an error
    # records equal in every field but "id": skip all but the first (counted), or keep them
    duplicates: Literal["skip", "keep"] = "skip"
    # file paths inside records (images) must resolve inside the data file's directory unless true
    allow_outside_paths: bool = False
    eval_size: int = 0  # hold out this many training records for eval when data.eval is unset
    # {record key: column}: rename the columns of a data set that names them otherwise (every reader)
    columns: Optional[dict] = None
    # read data.train as training reaches it, for sets that do not fit in memory (mmalign_data/streaming.py)
    streaming: bool = False
    shuffle_buffer: int = 1000  # records a streamed pass is shuffled through
    prefetch: int = 0  # micro-batches collated ahead by a background thread (mmalign_data/prefetch.py); 0: off
    options: Any = field(default_factory=NoDataOptions, metadata={"internal": True})


@dataclass
class LossConfig:
    name: str = "sigmoid"
    beta: float = 0.1
    options: dict = field(default_factory=dict)  # keyword options of the loss function
    sft_weight: float = 0.0  # weight of the NLL term on the chosen response (RPO)


@dataclass
class TrainConfig:
    max_steps: int = 0  # optimizer steps; 0 means `epochs` passes over the data
    epochs: float = 1.0
    batch_size: int = 8  # pairs per micro-batch per process
    gradient_accumulation_steps: int = 1
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # a registered optimizer: adamw (PyTorch), or bitsandbytes' adamw_8bit, paged_adamw_8bit,
    # paged_adamw_32bit (plugins/mmalign_optimizers)
    optimizer: str = "adamw"
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    # compute: autocast in bf16/fp16; "no" means model.dtype's autocast when that is bfloat16 or
    # float16, else float32 (see mmalign/precision.py)
    precision: Literal["no", "bf16", "fp16"] = "no"
    # dtype of the trainable weights the optimizer updates: float32 master weights, or model.dtype
    # (pure low-precision training, with a warning)
    master_weights: Literal["float32", "model_dtype"] = "float32"
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end (when eval data exists)
    save_every: int = 0  # 0: only the final model
    run_store: str = "local"  # where checkpoints, metrics and final/ go (mmalign/run_store.py)
    keep_last: int = 2  # checkpoints kept
    # a non-finite loss or gradient: stop (the last checkpoint stays intact) or skip the update
    # (counted as skipped_steps in metrics.jsonl)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    progress: bool = True
    callbacks: list[str] = field(default_factory=lambda: ["plot"])
    # experiment trackers (accelerate's): tensorboard, wandb, mlflow, trackio; each row of
    # metrics.jsonl goes to every one of them
    report_to: list[str] = field(default_factory=list)
    # a Hub repository (org/name): final/ and its model card are uploaded there after training
    push_to_hub: Optional[str] = None


@dataclass
class EvalConfig:
    evaluators: list[str] = field(default_factory=lambda: ["reward_accuracy"])
    batch_size: int = 16
    checkpoint: Optional[str] = None  # model to evaluate; default: output_dir/final if it exists
    options: dict = field(default_factory=dict)  # per evaluator name, e.g. {chair: {max_new_tokens: 32}}
    samples: int = 0  # at each evaluation, the policy's answers to this many prompts (mmalign/eval_samples.py)


@dataclass
class AlgorithmConfig:
    # an online algorithm (grpo, rloo, ... `mmalign plugins` lists them): the policy samples its own
    # data from the prompts of data.train; null: offline preference training on data.train's pairs
    name: Optional[str] = None
    options: dict = field(default_factory=dict)  # the algorithm's options (checked against its own keys)


@dataclass
class Config:
    output_dir: str = "runs/mmalign"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    source: Optional[str] = field(default=None, metadata={"internal": True})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Read a YAML file (or a dict), apply ``--set`` overrides, validate, and return a Config.

    Relative paths written in the file (PATH_KEYS) are relative to the file's directory; those of
    a dict config and of ``--set`` overrides, to the current directory (see _resolve_paths).
    """
    where = str(path) if path is not None else "config"
    from mmalign.config_file import check_top_level, read_config_file

    # a deep copy: overrides must not write into the caller's dict
    data = read_config_file(path) if path is not None else copy.deepcopy(check_top_level(data, where))
    data = apply_overrides(data, overrides or [])
    from mmalign.plugin_data_options import attach_data_options, split_plugin_keys

    plugin_keys = split_plugin_keys(data)  # data.* keys of the modality plugin (data.max_length, ...)
    cfg = _build(Config, data, "", where)
    cfg.source = str(path) if path is not None else None
    if path is not None:
        from_cli = {".".join(parse_override(text)[0]) for text in overrides or []}
        _resolve_paths(cfg, Path(path).parent.resolve(), skip=from_cli)
    unknown_reward = attach_data_options(cfg, plugin_keys, where)
    validate(cfg, where)
    if unknown_reward is not None:
        raise unknown_reward
    return cfg


# Keys holding a file or directory. output_dir (and eval.checkpoint) are not among them: like
# TRL's, they are relative to the current directory, where a run's outputs are expected.
PATH_KEYS = ("data.train", "data.eval", "model.name_or_path", "model.tokenizer",
             "reference.name_or_path", "reference.cache_dir")
MODEL_KEYS = {"model.name_or_path", "model.tokenizer", "reference.name_or_path"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # name or org/name


def _resolve_paths(cfg: Config, base: Path, skip: set[str] = frozenset()) -> None:
    """One rule, no fallback: a relative path written in a config file is relative to the file's
    directory ``base``, whatever the current directory holds. Exceptions: a model key whose value
    does not exist there and reads as a hub id (``name`` or ``org/name``) stays a hub id, a value
    with a scheme (``hf://org/name``) stays as written, and keys in ``skip`` (given with --set on
    the command line) stay relative to the current directory."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None or key in skip:
            continue
        value = os.path.expanduser(value)
        if "://" in value:  # a dataset id such as hf://org/name: not a path
            continue
        if not Path(value).is_absolute():
            candidate = base / value
            if key in MODEL_KEYS and not candidate.exists() and HUB_ID.fullmatch(value):
                continue
            value = str(candidate)
        setattr(getattr(cfg, section), name, value)


def validate(cfg: Config, where: str = "config") -> None:
    """Values and the rules across keys: see mmalign/validation.py (names are checked there too,
    against the registry, by validate_for_run)."""
    from mmalign.validation import validate as validate_values

    validate_values(cfg, where)


def to_dict(cfg: Config) -> dict:
    """The config as users write it: the plugin's data options flat under ``data``."""
    from mmalign.plugin_data_options import to_flat_dict

    data = to_flat_dict(cfg)
    data.pop("source", None)
    return data


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
