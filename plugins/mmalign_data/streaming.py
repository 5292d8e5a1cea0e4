"""Streaming (``data.streaming: true``): training records are read, checked and prepared as
training reaches them, for data sets that do not fit in memory. Memory holds the shuffle buffer,
not the data set.

A reader that can stream registers ``stream=`` beside its whole-file function (``jsonl``,
``parquet``, a ``save_to_disk`` folder): ``stream(path) -> mmalign.data.RecordStream``, a fresh iterator of
Records for each pass and the number of records in one pass (JSONL lines, Parquet metadata).

- **Order.** Each pass is shuffled through a buffer of ``data.shuffle_buffer`` records, as
  ``datasets``' ``IterableDataset.shuffle`` does, with a generator seeded by ``seed + pass``.
  Passes follow each other without a gap, so an optimizer step may take the end of one pass and
  the start of the next.
- **Position.** ``consumed`` counts the records taken from that order, all processes together and
  skipped ones included. It is the data position saved in checkpoints: a resumed run reads its pass
  again up to that position without preparing what it passes over, so a resume is exact.
- **Checks.** A record is prepared (checked, tokenized, images decoded) when it is taken. A bad one
  stops the run with its file and row (exit 2), after the last checkpoint; one the plugin skips is
  counted in the data report. Duplicates are not looked for (that would need every record).
- **Processes.** Every process reads the same order and prepares every record of a micro-step; each
  collates its own slice, as :class:`mmalign_data.batch_stream.BatchStream` does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from mmalign.data import Record, RecordStream
from mmalign.errors import ConfigError, DataError, SkipRecord
from mmalign_data.batch_stream import OfflineBatches, collate_slices
from mmalign_data.preparing import DataReport
from mmalign_data.reading import reader_entry, rename_columns, run_reader


def stream_records(path: str | None, fmt: str, key: str, columns: dict | None = None) -> RecordStream:
    """``path`` as a :class:`RecordStream` (``data.streaming``), from the
    ``stream`` function its reader registered; ``columns`` renamed as each record is read."""
    entry, source = reader_entry(path, fmt, key)
    stream = entry.meta.get("stream")
    if stream is None:
        raise ConfigError(f"data.streaming: the '{entry.name}' reader of '{path}' (from '{key}') reads whole "
                          f"files only. Convert the data to JSONL or Parquet, or set data.streaming: false.")
    opened = run_reader(stream, source, path, fmt, key)
    if not columns:
        return opened
    return RecordStream(lambda: (rename_columns([r], columns)[0] for r in opened.open()), opened.count)


def shuffled(records: Iterator[Record], size: int, generator: torch.Generator) -> Iterator[Record]:
    """Buffer shuffle: the first ``size`` records fill a buffer; each later record takes the place
    of a uniformly drawn one, which is yielded; the rest of the buffer follows in a random order.
    ``size`` >= the number of records is a full permutation."""
    buffer: list[Record] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        j = int(torch.randint(size, (1,), generator=generator))
        yield buffer[j]
        buffer[j] = record
    for j in torch.randperm(len(buffer), generator=generator).tolist():
        yield buffer[j]


def prepare_record(reward: Any, record: Record, *, paired: bool, strict: bool, allow_outside: bool,
                   report: DataReport) -> Optional[Any]:
    """The plugin's example of ``record``, or None for a record to skip (counted in ``report``);
    DataError for a record that cannot be used (named by its file and row)."""
    if record.problem:
        raise DataError(record.problem)
    record.notes.clear()
    record.allow_outside = allow_outside
    report.read += 1
    try:
        example = reward.prepare(record, paired=paired)
    except SkipRecord as err:
        if strict:
            raise DataError(f"{record.where}: {err.reason} (data.strict is true; fix or remove the "
                            f"record, or set data.strict: false to skip such records).") from None
        report.skip(err.reason, record.where)
        return None
    for reason in record.notes:
        report.note(reason, record.where)
    report.used += 1
    return example


@dataclass
class StreamingStream(OfflineBatches):
    """The offline batch source over a streamed data set (see the module docstring)."""

    records: RecordStream
    prepare: Callable[..., Optional[Any]]  # prepare_record bound to the plugin and data keys
    report: DataReport  # what training has read so far: counted as records are prepared
    batch_size: int
    accumulation: int
    world: int
    rank: int
    seed: int
    generator: torch.Generator
    prefetch: int = 0  # micro-batches collated ahead by a thread (prefetch.py)
    buffer: int = 1000  # data.shuffle_buffer
    consumed: int = 0  # records taken, all processes together (skipped ones included)
    _batches: Optional[Iterator] = field(default=None, repr=False)
    _at: int = field(default=-1, repr=False)

    @property
    def per_epoch(self) -> int:
        return self.records.count

    def producer(self, plugin: Any) -> tuple:
        """(produce, its arguments before the position and generator): see :func:`streamed_batches`."""
        read = (self.records, self.buffer, self.seed, self.prepare, self.report)
        return streamed_batches, read, (self.batch_size, self.world, self.rank), plugin


def streamed_batches(read: tuple, layout: tuple, plugin: Any, consumed: int, generator: torch.Generator) -> Iterator:
    """(data, None, position after, generator state after) of this process's micro-batches: each
    the next batch_size x processes usable records from ``consumed`` on, its own slice collated.
    ``read``: (records, buffer, seed, prepare, report); ``layout``: (batch_size, world, rank)."""
    records, report = read[0], read[4]
    batch_size, world, rank = layout
    taken = prepared(*read[:4], report, consumed)
    while True:
        examples = []
        while len(examples) < batch_size * world:
            skipped = 0
            position, example = next(taken)
            while example is None:
                skipped += 1
                if skipped >= records.count:
                    raise DataError(f"data.train: {records.count} records in a row were skipped, as many as a "
                                    f"pass holds: nothing in the data is usable.\n{report.table()}")
                position, example = next(taken)
            examples.append(example)
        chunks = [examples[r * batch_size:(r + 1) * batch_size] for r in range(world)]
        yield collate_slices(plugin, chunks, rank, generator), None, position, generator.get_state()


def prepared(records: RecordStream, buffer: int, seed: int, prepare: Callable, report: DataReport,
             position: int) -> Iterator[tuple[int, Optional[Any]]]:
    """(position after, the example or None for a skipped record) of every record from
    ``position`` on, pass after pass: each pass shuffled, the records before ``position`` passed
    over unprepared."""
    passes, offset = divmod(position, records.count)
    while True:
        order = shuffled(records.open(), buffer, torch.Generator().manual_seed(seed + passes))
        for record in itertools.islice(order, offset, None):
            position += 1
            yield position, prepare(record, report=report)
        if position != (passes + 1) * records.count:
            raise DataError(f"data.train: a pass over the data ended after {position - passes * records.count} "
                            f"records, but it held {records.count} when training started: the data changed "
                            f"during the run. Restore it, or start a new run.")
        passes, offset = passes + 1, 0
