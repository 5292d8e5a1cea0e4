"""``mmalign check CONFIG``: the summary of a config that passed validation, after checking its data
as training would before step 1: every record through the data layer and the modality plugin's
``prepare`` (every image a record points to resolved and decoded). No model weights are loaded and
nothing is downloaded: for a model that is not on this machine (a hub id) only the config is
validated, and it says so."""

from __future__ import annotations

from pathlib import Path

from mmalign.config import Config
from mmalign.errors import DataError


def is_local(cfg: Config) -> bool:
    """Built from model.tiny, or every path the model needs exists here."""
    paths = [p for p in (cfg.model.name_or_path, cfg.model.tokenizer, cfg.reference.name_or_path) if p]
    return all(Path(p).exists() for p in paths)


def record_checker(cfg: Config, reg):
    """What runs the modality plugin's ``prepare`` on records, loading no model weights: the
    factory's ``record_checker(model_cfg, data_cfg)``, by default the plugin itself (text and VLM
    load only a tokenizer or processor; diffusion, whose construction loads weights, overrides it)."""
    factory = reg.get("rewards", cfg.model.reward, "model.reward")
    return factory.record_checker(cfg.model, cfg.data)


BUILT_IN_SOURCES = ("auto", "files", "streamed", "prompts")  # mmalign_data's, which read data files


def read_data(cfg: Config) -> list[str]:
    """Every record of data.train and data.eval through the data layer and the plugin's
    ``prepare``, as training prepares them before step 1: every line parsed, every file a record
    points to resolved (outside paths refused unless data.allow_outside_paths) and decoded in full
    (one image at a time, dropped once checked). One line per file, or the DataError naming every
    bad record."""
    from mmalign.plugins import registry
    from mmalign_data.preparing import prepare_examples
    from mmalign_data.reading import is_url, read_records

    reg = registry()
    if cfg.data.source not in BUILT_IN_SOURCES:  # a plugin's source: its own check= ran
        return [f"  data: read by data.source '{cfg.data.source}' (a plugin's source), not by check"]
    if cfg.algorithm.name:  # prompts for an online algorithm: each record needs one
        from mmalign_data.sources import prompt_records

        return [f"  {key}: {path} is a hub dataset, not read (check downloads nothing)" if is_url(path)
                else f"  {key}: {len(prompt_records(cfg, path, key))} prompt records read from {path}"
                for key, path in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)) if path]
    checker = record_checker(cfg, reg)
    paired = reg.get("losses", cfg.loss.name, "loss.name").paired
    lines, used = [], {}
    for key in ("data.train", "data.eval"):
        path = getattr(cfg.data, key.split(".")[1])
        if path is None:
            continue
        if is_url(path):  # mmalign check downloads nothing
            lines.append(f"  {key}: {path} is a hub dataset, not read (check downloads nothing)")
            continue
        if key == "data.train" and cfg.data.streaming:
            report = check_stream(cfg, checker, paired, path)
        else:
            records = read_records(path, cfg.data.format, key, cfg.data.columns)
            _, report = prepare_examples(checker, records, paired=paired, strict=cfg.data.strict,
                                         path=path, duplicates=cfg.data.duplicates,
                                         allow_outside=cfg.data.allow_outside_paths)
        used[key] = report.used
        skipped = sum((report.skipped or {}).values())
        lines.append(f"  {key}: {report.read} records read from {path}, {report.used} usable"
                     f"{f', {skipped} skipped' if skipped else ''}")
    size = cfg.data.eval_size
    if size and size >= used.get("data.train", 0):
        raise DataError(f"data.eval_size ({size}) holds out every usable record of {cfg.data.train} "
                        f"({used.get('data.train', 0)} records), leaving none to train on. Lower "
                        f"data.eval_size or set data.eval to a separate file.")
    return lines


def check_stream(cfg: Config, checker, paired: bool, path: str):
    """A streamed data.train, one record at a time (none kept): its DataReport, or the DataError
    naming every bad record."""
    from mmalign.data import bad_records_error
    from mmalign_data.preparing import DataReport
    from mmalign_data.streaming import prepare_record, stream_records

    report, problems = DataReport(path, skipped={}), []
    for record in stream_records(path, cfg.data.format, "data.train", cfg.data.columns).open():
        try:
            prepare_record(checker, record, paired=paired, strict=cfg.data.strict,
                           allow_outside=cfg.data.allow_outside_paths, report=report)
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise bad_records_error(path, problems)
    return report


def summary(cfg: Config, where: str) -> str:
    tiny = cfg.model.tiny or {}
    model = cfg.model.name_or_path or f"built from model.tiny ({tiny.get('model_type') or tiny.get('architecture') or 'the plugin default'})"
    t = cfg.train
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    lines = [f"{where}: valid",
             f"  model: {cfg.model.reward}, {model}{', LoRA r=' + str(cfg.model.lora.r) if cfg.model.lora else ''}",
             f"  algorithm: {cfg.algorithm.name} {cfg.algorithm.options} (loss.beta {cfg.loss.beta:g})" if
             cfg.algorithm.name else f"  loss: {cfg.loss.name} (beta {cfg.loss.beta:g})",
             f"  reference: {cfg.reference.strategy}",
             f"  train: {length}, batch {t.batch_size} x {t.gradient_accumulation_steps} accumulation, "
             f"lr {t.lr:g} ({t.lr_scheduler}), precision {t.precision}",
             f"  eval: {', '.join(cfg.eval.evaluators) or '(none)'}; output_dir: {cfg.output_dir}"]
    if is_local(cfg):
        lines += read_data(cfg)
        lines.append("  no model was loaded (at most a tokenizer or processor); every record was "
                     "prepared as training prepares it, the files it points to resolved and decoded")
    else:
        lines.append(f"  config only: '{cfg.model.name_or_path or cfg.model.tokenizer}' is not a local "
                     f"path (a hub id?), and `mmalign check` downloads nothing, so the model and the "
                     f"data files were not read")
    return "\n".join(lines)
