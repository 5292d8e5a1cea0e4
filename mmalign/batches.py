"""What the loop trains on: a :class:`Batch` (a plugin's batch with what the engine knows about
it), and the order in which every batch source visits the training records. One epoch is a
permutation of the records seeded by ``seed + epoch``; with N processes each micro-step takes N
consecutive slices of it, one per rank, so a run sees the same records whatever N is. The offline
sources (the ``data`` plugin's ``BatchStream``) and the online ones (``mmalign_rl``'s prompt
stream) both walk this order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Batch:
    """A plugin's batch, with what the engine knows about it beyond the plugin's data:

    index:  [C] positions of its examples in the training set, which the reference cache looks
            scores up by; None for batches of other data (held-out, sampled)
    values: per-response values a batch source computed, handed to group losses as ``values``
            (an online source: rewards, advantages, the sampling policy's per-unit log-probs)
    metrics: what the source measured (reward mean and std, response lengths, time spent
            generating and scoring), logged with the step's metrics
    """

    data: Any
    index: Tensor | None = None
    values: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # the source's (rewards, lengths, times)


def slices_at(n: int, batch_size: int, world: int, seed: int, per_epoch: int, consumed: int) -> list[Tensor]:
    """The positions of every process's micro-batch at data position ``consumed``, in rank order:
    the epoch's permutation of the ``n`` examples (seeded by seed + epoch), sliced."""
    epoch, pos = divmod(consumed, per_epoch)
    order = epoch_order(n, seed, epoch)
    return [order[pos + r * batch_size:pos + (r + 1) * batch_size] for r in range(world)]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the ``n`` examples in ``epoch``: a permutation seeded by seed + epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def next_slices(stream: Any) -> list[Tensor]:
    """The positions of every process's next micro-batch, in rank order; the stream moves past them."""
    slices = slices_at(len(stream.examples), stream.batch_size, stream.world, stream.seed, stream.per_epoch,
                       stream.consumed)
    stream.consumed += stream.batch_size * stream.world
    return slices
