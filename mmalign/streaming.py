"""Streaming (``data.streaming: true``): training records are read, checked and prepared as
training reaches them, for data sets that do not fit in memory. Memory holds the shuffle buffer,
not the data set.

A reader that can stream registers ``stream=`` beside its whole-file function (``jsonl``,
``parquet``, a ``save_to_disk`` folder): ``stream(path) -> RecordStream``, a fresh iterator of
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
  collates its own slice, as :class:`mmalign.batches.BatchStream` does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from mmalign.batches import Batch
from mmalign.data import DataReport, Record
from mmalign.errors import DataError, SkipRecord


@dataclass
class RecordStream:
    """What a streaming reader returns: ``open()`` starts a pass over the records, in file order."""

    open: Callable[[], Iterator[Record]]
    count: int  # records in one pass (blank JSONL lines not counted)


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
class StreamingStream:
    """The offline batch source over a streamed data set (see the module docstring); the same
    members as :class:`mmalign.batches.BatchStream`."""

    records: RecordStream
    prepare: Callable[..., Optional[Any]]  # prepare_record bound to the plugin and data keys
    report: DataReport  # what training has read so far: counted as records are prepared
    batch_size: int
    accumulation: int
    world: int
    rank: int
    seed: int
    generator: torch.Generator
    buffer: int  # data.shuffle_buffer
    consumed: int = 0  # records taken, all processes together (skipped ones included)
    _order: Optional[Iterator[Record]] = field(default=None, repr=False)
    _at: int = field(default=-1, repr=False)  # the position _order stands at

    @property
    def per_epoch(self) -> int:
        return self.records.count

    @property
    def examples_per_batch(self) -> int:
        return self.batch_size

    @property
    def at_boundary(self) -> bool:
        return True

    def source_state(self) -> tuple[dict[str, Tensor], dict]:
        return {}, {}

    def load_source_state(self, tensors: dict[str, Tensor], meta: dict) -> None:
        pass

    def next_batch(self, plugin: Any, device: torch.device) -> Batch:
        """This process's next micro-batch: the next batch_size x processes usable records."""
        examples = [self._next_example() for _ in range(self.batch_size * self.world)]
        data = None
        for rank in range(self.world):
            chunk = examples[rank * self.batch_size:(rank + 1) * self.batch_size]
            if rank == self.rank:
                data = plugin.collate(chunk, self.generator)
            elif not plugin.deterministic_collate:  # only to advance the generator past that rank's draws
                plugin.collate(chunk, self.generator)
        return Batch(plugin.encode(plugin.to_device(data, device)))

    def _next_example(self) -> Any:
        for _ in range(self.records.count):
            example = self.prepare(self._next_record(), report=self.report)
            if example is not None:
                return example
        raise DataError(f"data.train: {self.records.count} records in a row were skipped, as many as a pass "
                        f"holds: nothing in the data is usable.\n{self.report.table()}")

    def _next_record(self) -> Record:
        if self._order is None or self._at != self.consumed:  # the first batch, or a resumed run
            self._seek(self.consumed)
        record = next(self._order, None)
        if record is None:
            if self.consumed % self.records.count:
                raise DataError(f"data.train: a pass over the data ended after {self.consumed % self.records.count} "
                                f"records, but it held {self.records.count} when training started: the data "
                                f"changed during the run. Restore it, or start a new run.")
            self._seek(self.consumed)  # the next pass
            record = next(self._order)
        self.consumed += 1
        self._at = self.consumed
        return record

    def _seek(self, position: int) -> None:
        """Stand at ``position``: its pass, shuffled, with the records before it passed over."""
        passes, offset = divmod(position, self.records.count)
        order = shuffled(self.records.open(), self.buffer, torch.Generator().manual_seed(self.seed + passes))
        self._order = itertools.islice(order, offset, None)
        self._at = position


def check_streaming_config(cfg: Any, where: str) -> None:
    """What a streamed data.train (mmalign/streaming.py) cannot do: it has no positions to hold
    records out or cache scores by, and an online run's prompts are read whole."""
    from mmalign.validation import fail

    if cfg.algorithm.name:
        raise fail(where, "data.streaming", f"is true, but an online algorithm ({cfg.algorithm.name}) reads "
                                            f"its prompts whole. Set data.streaming: false.")
    if cfg.data.eval_size:
        raise fail(where, "data.eval_size", "is set, but a streamed data.train holds nothing out: give the "
                                            "held-out records as data.eval.")
    if cfg.reference.cache != "none":
        raise fail(where, "reference.cache", f"is '{cfg.reference.cache}', but a streamed data.train has no "
                                             f"positions to cache reference scores by. Set reference.cache: none.")
