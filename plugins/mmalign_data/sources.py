"""The data sources this plugin registers (``mmalign_register_data_sources``). ``data.source``
names one; with ``auto`` the run asks for ``prompts`` for an online algorithm, ``streamed`` for
``data.streaming: true``, ``files`` otherwise. Each registers a ``check(cfg)`` of the settings it
cannot honour, run before anything loads. Each is ``source(cfg, plugin, paired, layout,
log) -> mmalign.data.TrainingData``, where ``layout`` is (batch_size, gradient_accumulation_steps,
processes, rank, seed, the data generator, data.prefetch), and refuses bad data before the run
touches ``output_dir``.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any, Callable

from mmalign.data import TrainingData
from mmalign.errors import DataError
from mmalign.validation import fail
from mmalign_data.batch_stream import BatchStream
from mmalign_data.preparing import DataReport, prepare_examples
from mmalign_data.reading import read_records
from mmalign_data.streaming import StreamingStream, prepare_record, stream_records


def files(cfg: Any, plugin: Any, paired: bool, layout: tuple, log: Callable) -> TrainingData:
    """data.train (and data.eval, or data.eval_size records held out of data.train) read whole and
    prepared before training starts."""
    train, report = prepare_file(cfg, plugin, paired, cfg.data.train, "data.train", log)
    reports, held_out = [report], []
    if cfg.data.eval:
        held_out, eval_report = prepare_file(cfg, plugin, paired, cfg.data.eval, "data.eval", log)
        reports.append(eval_report)
    elif cfg.data.eval_size:
        train, held_out = train[:-cfg.data.eval_size], train[-cfg.data.eval_size:]
    content = plugin.content_fingerprint(train)
    stream = BatchStream(train, *layout)
    check_enough_data(cfg, stream, len(held_out))
    return TrainingData(stream, held_out, reports, content, partial(first_records, cfg))


def prompts(cfg: Any, plugin: Any, paired: bool, layout: tuple, log: Callable) -> TrainingData:
    """The prompts an online algorithm's policy answers: the records of data.train (data.eval),
    each with a "prompt"; the plugin reads each record's context when it samples."""
    train = prompt_records(cfg, cfg.data.train, "data.train")
    held_out = prompt_records(cfg, cfg.data.eval, "data.eval") if cfg.data.eval else []
    log(f"{cfg.data.train}: {len(train)} records read, each a prompt for {cfg.algorithm.name}")
    stream = BatchStream(train, *layout)
    check_enough_data(cfg, stream, len(held_out))
    return TrainingData(stream, held_out, [], "", partial(first_records, cfg))


def streamed(cfg: Any, plugin: Any, paired: bool, layout: tuple, log: Callable) -> TrainingData:
    """data.train read as training reaches it (streaming.py); data.eval read whole."""
    records = stream_records(cfg.data.train, cfg.data.format, "data.train", cfg.data.columns)
    per_step = layout[0] * layout[1] * layout[2]
    if records.count < per_step:
        raise DataError(f"{cfg.data.train}: {records.count} records, fewer than one optimizer step needs "
                        f"({per_step} = batch_size x gradient_accumulation_steps x processes). Add data or "
                        f"lower train.batch_size.")
    report = DataReport(cfg.data.train, skipped={})  # filled as training reads (the result's data_reports)
    prepare = partial(prepare_record, plugin, paired=paired, strict=cfg.data.strict,
                      allow_outside=cfg.data.allow_outside_paths)
    stream = StreamingStream(records, prepare, report, *layout, buffer=cfg.data.shuffle_buffer)
    log(f"data {cfg.data.train}: {records.count} records, streamed (each is checked when training reaches it)")
    if not cfg.data.eval:
        return TrainingData(stream, [], [report], "", partial(first_records, cfg))
    held_out, eval_report = prepare_file(cfg, plugin, paired, cfg.data.eval, "data.eval", log)
    return TrainingData(stream, held_out, [report, eval_report], "", partial(first_records, cfg))


def prepare_file(cfg: Any, plugin: Any, paired: bool, path: str, key: str, log: Callable) -> tuple[list, Any]:
    """(the examples of the data file at ``path``, its data report), logged."""
    records = read_records(path, cfg.data.format, key, cfg.data.columns)
    examples, report = prepare_examples(plugin, records, paired=paired, strict=cfg.data.strict, path=path,
                                        duplicates=cfg.data.duplicates, allow_outside=cfg.data.allow_outside_paths)
    log(report.table())
    return examples, report


def prompt_records(cfg: Any, path: str, key: str) -> list:
    """The records at ``path`` (data.train, data.eval) for an online algorithm: each needs a "prompt"."""
    records = read_records(path, cfg.data.format, key, cfg.data.columns)
    bad = [r.where for r in records if "prompt" not in r.fields]
    if bad:
        raise DataError(f"{bad[0]}: an online algorithm ({cfg.algorithm.name}) needs a \"prompt\" in every "
                        f"record of {key} ({len(bad)} lack one); other fields (e.g. \"answer\") go "
                        f"to the reward functions.")
    return records


def check_enough_data(cfg: Any, stream: BatchStream, held_out: int) -> None:
    per_step = stream.batch_size * stream.accumulation * stream.world
    if len(stream.examples) < per_step:
        held = f" after data.eval_size held {held_out} out" if cfg.data.eval_size else ""
        raise DataError(f"{cfg.data.train}: {len(stream.examples)} usable records{held}, fewer than one "
                        f"optimizer step needs ({per_step} = batch_size x gradient_accumulation_steps "
                        f"x processes). Add data or lower train.batch_size"
                        f"{' or data.eval_size' if held else ''}.")


def first_records(cfg: Any, n: int) -> list:
    """The first ``n`` records of data.eval (or data.train), read as training reads them: the
    contexts ``eval.samples`` answers at every evaluation."""
    path, key = (cfg.data.eval, "data.eval") if cfg.data.eval else (cfg.data.train, "data.train")
    if key == "data.train" and cfg.data.streaming:
        return list(itertools.islice(stream_records(path, cfg.data.format, key, cfg.data.columns).open(), n))
    return [r for r in read_records(path, cfg.data.format, key, cfg.data.columns) if not r.problem][:n]


# --- each source's config rules (its ``check=``), run before anything loads ----------------------


def check_files(cfg: Any) -> None:
    """data.train read whole: not streamed; held-out records from data.eval or data.eval_size."""
    check_held_out(cfg)
    check_offline(cfg, "files")
    if cfg.data.streaming:
        raise fail(None, "data.streaming", "is true, but data.source is 'files', which reads data.train whole. "
                                           "Set data.source: auto (or streamed), or data.streaming: false.")


def check_offline(cfg: Any, name: str) -> None:
    """An online algorithm reads prompts (the source ``prompts``), not training pairs."""
    if cfg.algorithm.name:
        raise fail(None, "data.source", f"is '{name}', but an online algorithm ({cfg.algorithm.name}) samples "
                                        f"from prompts: set data.source: auto (or prompts).")


def check_held_out(cfg: Any) -> None:
    """Held-out records come from data.eval or from data.eval_size, not both."""
    if cfg.data.eval_size and cfg.data.eval is not None:
        raise fail(None, "data.eval_size", f"({cfg.data.eval_size}) is set together with data.eval; "
                                           f"held-out records come from one of them. Remove one.")


def check_streamed(cfg: Any) -> None:
    """What a streamed data.train (streaming.py) cannot do: it has no positions to hold records out
    or cache reference scores by."""
    check_held_out(cfg)
    check_offline(cfg, "streamed")
    if cfg.data.eval_size:
        raise fail(None, "data.eval_size", "is set, but a streamed data.train holds nothing out: give the "
                                           "held-out records as data.eval.")
    if cfg.reference.cache != "none":
        raise fail(None, "reference.cache", f"is '{cfg.reference.cache}', but a streamed data.train has no "
                                            f"positions to cache reference scores by. Set reference.cache: none.")


def check_prompts(cfg: Any) -> None:
    """An online run's prompts are read whole, and its batches are sampled, not collated ahead."""
    check_held_out(cfg)
    if not cfg.algorithm.name:
        raise fail(None, "data.source", "is 'prompts', the prompts an online algorithm samples from, but "
                                        "algorithm.name is not set: set data.source: auto for offline training.")
    if cfg.data.prefetch:
        raise fail(None, "data.prefetch", "is set, but an online run's batches are sampled by the policy, not read.")
    if cfg.data.streaming:
        raise fail(None, "data.streaming", f"is true, but an online algorithm ({cfg.algorithm.name}) reads "
                                           f"its prompts whole. Set data.streaming: false.")
