"""The offline stream of training batches: which records each micro-batch holds, and its randomness.

One epoch is a permutation of the training examples seeded by ``seed + epoch``. With N processes
each optimizer micro-step takes N consecutive slices, one per rank: together what one process
accumulating N micro-batches would take. A plugin whose ``collate`` draws randomness (diffusion
noise) gets it from one generator that every process holds; each process also collates the other
ranks' slices, in rank order, only to advance that generator past their draws, so a run's
randomness does not depend on how many processes share it. A plugin that declares
``deterministic_collate`` draws nothing, and each process collates only its own slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from mmalign.batches import Batch, epoch_order
from mmalign_data import prefetch


class OfflineBatches:
    """What the offline batch sources (:class:`BatchStream`, mmalign_data.streaming.StreamingStream)
    share: micro-batches of ``batch_size`` records made by the producer their ``producer`` names,
    nothing in flight between steps, nothing to save beyond the data position."""

    batch_size: int

    @property
    def examples_per_batch(self) -> int:
        """Training examples in one process's micro-batch (the log's time/samples_per_s)."""
        return self.batch_size

    def next_batch(self, plugin: Any, device: torch.device) -> Batch:
        return next_batch(self, plugin, device)

    @property
    def at_boundary(self) -> bool:
        """Whether a checkpoint written now resumes exactly: the source holds nothing in flight."""
        return True

    def source_state(self) -> tuple[dict[str, Tensor], dict]:
        """(tensors, JSON-able metadata) the source keeps beyond its data position; saved in
        checkpoints as ``source.safetensors`` and trainer_state's "source"."""
        return {}, {}

    def load_source_state(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Restore what :meth:`source_state` returned."""


@dataclass
class BatchStream(OfflineBatches):
    """The offline batch source: micro-batches of the training examples, epoch after epoch.
    Where it stands (``consumed``, ``generator``) is the run's data state, saved in checkpoints.
    A batch source is anything with ``next_batch(plugin, device) -> Batch``, that state, and the
    members below: an online source samples its batches from the policy instead (``plugin.sample``;
    its ``examples_per_batch``: prompts x samples), may hold a rollout between optimizer steps
    (``at_boundary``) and may keep tensors of its own that a checkpoint must save (a PPO critic:
    ``source_state``)."""

    examples: list
    batch_size: int  # per process and micro-batch
    accumulation: int  # micro-batches per optimizer step
    world: int
    rank: int
    seed: int
    generator: torch.Generator  # every process holds the same one
    prefetch: int = 0  # micro-batches collated ahead by a thread (data.prefetch; prefetch.py)
    consumed: int = 0  # examples taken so far, all processes together
    _batches: Optional[Iterator] = field(default=None, repr=False)  # collated batches from ``_at`` on
    _at: int = field(default=-1, repr=False)

    @property
    def per_epoch(self) -> int:
        """Examples one epoch hands out: whole optimizer steps of every process."""
        span = self.batch_size * self.accumulation * self.world
        return len(self.examples) // span * span

    def producer(self, plugin: Any) -> tuple:
        """(produce, its arguments before the position and generator): see :func:`collated`."""
        return collated, self.examples, (self.batch_size, self.world, self.rank, self.seed, self.per_epoch), plugin


def next_batch(stream: Any, plugin: Any, device: torch.device) -> Batch:
    """This process's next micro-batch of an offline stream, collated (in place, or ahead by a
    thread), moved to ``device`` and encoded."""
    if stream._batches is None or stream._at != stream.consumed:  # the first batch, or a resumed run
        stream._batches = prefetch.start(stream, *stream.producer(plugin))
    data, index = prefetch.take(stream, stream._batches)
    stream._at = stream.consumed
    return Batch(plugin.encode(plugin.to_device(data, device)), index)


def collated(examples: list, layout: tuple, plugin: Any, consumed: int, generator: torch.Generator) -> Iterator:
    """(data, index, position after, generator state after) of this process's micro-batches from
    ``consumed`` on. ``layout``: (batch_size, world, rank, seed, per_epoch)."""
    batch_size, world, rank, seed, per_epoch = layout
    epoch, order = -1, None
    while True:
        if consumed // per_epoch != epoch:  # the epoch's permutation, drawn once (not per micro-batch)
            epoch = consumed // per_epoch
            order = epoch_order(len(examples), seed, epoch)
        pos = consumed % per_epoch
        slices = [order[pos + r * batch_size:pos + (r + 1) * batch_size] for r in range(world)]
        consumed += batch_size * world
        yield collate_slices(plugin, [[examples[i] for i in s.tolist()] for s in slices], rank, generator), \
            slices[rank], consumed, generator.get_state()


def collate_slices(plugin: Any, chunks: list[list], rank: int, generator: torch.Generator) -> Any:
    """This process's chunk collated; the other ranks' chunks collated only to advance the
    generator past their draws (none when the plugin's collate draws nothing)."""
    data = None
    for r, chunk in enumerate(chunks):
        if r == rank:
            data = plugin.collate(chunk, generator)
        elif not plugin.deterministic_collate:
            plugin.collate(chunk, generator)
    return data
