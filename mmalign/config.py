"""YAML -> typed config. Unknown keys, wrong types and bad values fail with the key's dotted
name, the valid keys or the expected type, and the fix (exit code 2 from the CLI)."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from mmalign.errors import ConfigError


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
    # auto: "disable_adapters" with LoRA (no second copy of the weights), else "copy"
    strategy: Literal["auto", "copy", "disable_adapters", "none"] = "auto"
    name_or_path: Optional[str] = None  # a different reference model (strategy copy)
    # Score every training record with the reference once and reuse it (text, VLM): memory, or
    # disk too (reusable by later runs with the same reference, data and settings).
    cache: Literal["none", "memory", "disk"] = "none"
    cache_dir: Optional[str] = None  # default: output_dir/reference_cache


@dataclass
class DataConfig:
    train: Optional[str] = None
    eval: Optional[str] = None
    format: str = "auto"  # a registered dataset format; auto picks by file suffix
    # text records: "trl" tokenizes exactly as TRL 1.16 (the tokenizer's special tokens such as
    # BOS, EOS after plain-string completions only, one max_length); "legacy": mmalign's older
    # convention (no special tokens, EOS always appended, separate prompt / completion limits)
    tokenization: Literal["trl", "legacy"] = "trl"
    max_length: Optional[int] = 1024  # tokens of prompt + completion per row (TRL's); null: no limit
    # which end of a row over max_length is kept (TRL's keep_start / keep_end)
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start"
    max_prompt_length: Optional[int] = None  # legacy only: prompts keep their last tokens
    max_completion_length: Optional[int] = None  # legacy only: completions keep their first tokens
    strict: bool = False  # turn every skipped record into an error
    # rows over the length limit: truncate (TRL's; counted in the data report) or skip (counted)
    too_long: Literal["truncate", "skip"] = "truncate"
    # records equal in every field but "id": skip all but the first (counted), or keep them
    duplicates: Literal["skip", "keep"] = "skip"
    # file paths inside records (images) must resolve inside the data file's directory unless true
    allow_outside_paths: bool = False
    eval_size: int = 0  # hold out this many training records for eval when data.eval is unset


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
    keep_last: int = 2  # checkpoints kept
    # a non-finite loss or gradient: stop (the last checkpoint stays intact) or skip the update
    # (counted as skipped_steps in metrics.jsonl)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    progress: bool = True
    callbacks: list[str] = field(default_factory=lambda: ["plot"])


@dataclass
class EvalConfig:
    evaluators: list[str] = field(default_factory=lambda: ["reward_accuracy"])
    batch_size: int = 16
    checkpoint: Optional[str] = None  # model to evaluate; default: output_dir/final if it exists
    options: dict = field(default_factory=dict)  # per evaluator name, e.g. {chair: {max_new_tokens: 32}}


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
    source: Optional[str] = field(default=None, metadata={"internal": True})


def data_length_problem(data: DataConfig, reward: str) -> Optional[tuple[str, str]]:
    """(key, what is wrong) when the length keys contradict data.tokenization; else None."""
    legacy_keys = [k for k in ("max_prompt_length", "max_completion_length") if getattr(data, k) is not None]
    if data.tokenization == "trl" and legacy_keys:
        return (f"data.{legacy_keys[0]}",
                "only applies with data.tokenization: legacy (separate prompt and completion limits, "
                "no special tokens, EOS always appended). The default data.tokenization: trl tokenizes "
                "as TRL 1.16, with one limit on prompt + completion: set data.max_length (default "
                "1024) and data.truncation_mode (keep_start | keep_end) instead, or set "
                "data.tokenization: legacy to keep the older behaviour.")
    if reward == "vlm" and data.tokenization == "trl" and data.truncation_mode == "keep_end":
        return ("data.truncation_mode", "is keep_end, which vision-language models do not support (as "
                "in TRL): it could cut image tokens out of the prompt. Use keep_start, or "
                "data.max_length: null.")
    return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
            str: "a string", dict: "a mapping"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, dicts ->
    dataclasses). Raise ConfigError naming the key otherwise."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = {}
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key, where)
            except ConfigError as e:
                errors[arg] = e
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and value is not None:  # Optional[X]: the error about X is the useful one
            raise errors[inner[0]]
        raise _type_error(value, tp, key, where)
    if origin is Literal:
        if value is False and "no" in typing.get_args(tp):
            return "no"  # YAML 1.1 reads a bare `no` as false
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise _type_error(value, tp, key, where)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(value, tp, key, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(value, tp, key, where)
        return _build(tp, value, key, where)
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(value, tp, key, where)
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string; accept it as a number
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool, dict) and isinstance(value, tp):
        return value
    raise _type_error(value, tp, key, where)


def _type_error(value: Any, tp: Any, key: str, where: str) -> ConfigError:
    return ConfigError(
        f"{where}: key '{key}' must be {_type_name(tp)}, got {value!r} "
        f"({type(value).__name__}). Fix the value in the config or with --set {key}=VALUE."
    )


def _build(cls: type, data: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = ", ".join(fields)
            raise ConfigError(
                f"{where}: unknown key '{dotted}'. Valid keys{' of ' + prefix if prefix else ''}: "
                f"{valid}. Check the spelling (see docs/configuration.md)."
            )
        kwargs[key] = _convert(value, hints[key], dotted, where)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], yaml value of c)."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. --set train.lr=1e-5.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section.")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Read a YAML file (or a dict), apply ``--set`` overrides, validate, and return a Config.

    Relative paths written in the file (PATH_KEYS) are relative to the file's directory; those of
    a dict config and of ``--set`` overrides, to the current directory (see _resolve_paths).
    """
    where = str(path) if path is not None else "config"
    from mmalign.validation import check_top_level, read_config_file

    # a deep copy: overrides must not write into the caller's dict
    data = read_config_file(path) if path is not None else copy.deepcopy(check_top_level(data, where))
    data = apply_overrides(data, overrides or [])
    cfg = _build(Config, data, "", where)
    cfg.source = str(path) if path is not None else None
    if path is not None:
        from_cli = {".".join(parse_override(text)[0]) for text in overrides or []}
        _resolve_paths(cfg, Path(path).parent.resolve(), skip=from_cli)
    validate(cfg, where)
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
    does not exist there and reads as a hub id (``name`` or ``org/name``) stays a hub id, and keys
    in ``skip`` (given with --set on the command line) stay relative to the current directory."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None or key in skip:
            continue
        value = os.path.expanduser(value)
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
    data = dataclasses.asdict(cfg)
    data.pop("source", None)
    return data


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
