"""What data is made of, for every source and reader: :class:`Record` (a record that remembers
where it came from, file and line, so every later error can name it), :class:`RecordStream` (what
a reader that can stream returns), and :class:`TrainingData` (what a data source hands a run).

Reading, preparing and batching records are the built-in ``data`` plugin's
(``plugins/mmalign_data``): it registers the data sources ``files``, ``streamed`` and ``prompts``
(hook ``mmalign_register_data_sources``); readers of file formats are plugins too
(``mmalign_register_datasets``: ``jsonl`` and ``json`` come from the built-in ``formats`` plugin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mmalign.errors import DataError


@dataclass
class Record:
    fields: dict
    where: str  # "path:line" (or "path:row N"), used in every error about this record
    root: Path  # directory that relative paths inside the record (images) resolve against
    # what a plugin's ``prepare`` did to a record it kept (e.g. "prompt truncated to ..."): counted
    # in the data report; see :meth:`note`
    notes: list[str] = field(default_factory=list)
    # set by a reader on a record it could not read (invalid JSON, say), in place of its fields:
    # read_records returns such records, and prepare_examples reports them with the file's other
    # bad records, so that one run names every bad line
    problem: str | None = None
    # data.allow_outside_paths: may paths inside this record leave ``root``? (set by
    # prepare_examples; see mmalign_formats.files.resolve_data_path)
    allow_outside: bool = False

    def note(self, reason: str) -> None:
        """Count a change made to this record (truncation, say) in the run's data report."""
        self.notes.append(reason)


MAX_LISTED = 10  # bad records listed in one error; the others are counted


def bad_records_error(path: str | Path, problems: list[str]) -> DataError:
    """One error for every bad record of a file, so a user fixes them all in one pass."""
    if len(problems) == 1:
        return DataError(problems[0])
    listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return DataError(f"{path}: {len(problems)} bad records; fix or remove each of them "
                     f"(the first {min(len(problems), MAX_LISTED)} are listed):\n{listed}{more}")


class UnreadableRecords(DataError):
    """A reader read its file to the end but could not read some records. ``records`` holds every
    record in file order, those it could not read with ``problem`` set."""

    def __init__(self, message: str, records: list[Record]):
        super().__init__(message)
        self.records = records


@dataclass
class RecordStream:
    """What a streaming reader returns: ``open()`` starts a pass over the records, in file order."""

    open: Callable[[], Iterator[Record]]
    count: int  # records in one pass (blank JSONL lines not counted)


@dataclass
class TrainingData:
    """What a data source (``mmalign_register_data_sources``) hands a run.

    stream:         the batch source the loop draws micro-batches from (``next_batch(plugin,
                    device) -> Batch``, its position ``consumed``, ``per_epoch``, ...; the members
                    are listed in docs/plugin-hooks.md; built-in: mmalign_data's ``BatchStream``);
                    an online run's algorithm builds its own source over ``stream.examples``
    eval_examples:  the held-out examples the evaluators see
    reports:        one data report per file read (``table()`` prints it), in the run's result
    content:        what identifies the training examples beyond the data file's bytes (images
                    they point to), for the run identity; "" when nothing does
    first_records:  ``first_records(n)``: the records ``eval.samples`` answers (the first n of
                    data.eval, else of data.train), read as training reads them
    """

    stream: Any
    eval_examples: list
    reports: list
    content: str = ""
    first_records: Callable[[int], list] = lambda n: []


def data_source(cfg: Any) -> str:
    """The registered data source a run reads (mmalign_register_data_sources): ``data.source``, or
    for ``auto`` an online algorithm's prompts, a streamed data.train, or data files read whole."""
    if cfg.data.source != "auto":
        return cfg.data.source
    return "prompts" if cfg.algorithm.name else "streamed" if cfg.data.streaming else "files"
