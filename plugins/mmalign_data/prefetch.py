"""``data.prefetch: N``: the next N micro-batches collated by a background thread while the current
one trains, so that a GPU step does not wait on image decoding or tokenization (a streamed set's
records are prepared there too). Image decoding (PIL) and fast tokenizers release the GIL, so
the thread overlaps with the step; ``time/data`` in metrics.jsonl shows what is left to wait.

Exactness: the thread draws collate randomness (diffusion noise) from its own copy of the data
generator and hands each batch over with the data position and the generator state after it. The
stream takes both as it hands the batch to the engine, so a checkpoint holds the state of the
batches trained, never of those collated ahead, and a run trains the same batches, prefetched or
not, resumed or not.
"""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Any, Iterator

import torch

WAIT = 0.1  # seconds between the thread's looks at its stop flag while the queue is full


class Prefetched:
    """The items of ``items`` computed ahead by a daemon thread, at most ``size`` waiting; an
    exception the iterator raised is raised where it occurred, after the items before it."""

    def __init__(self, items: Iterator, size: int):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=_fill, args=(items, self.queue, self.stop), daemon=True,
                                       name="mmalign-prefetch")
        self.thread.start()

    def __iter__(self) -> "Prefetched":
        return self

    def __next__(self) -> Any:
        kind, value = self.queue.get()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        self.stop.set()


def _fill(items: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in items:
            while not stop.is_set():
                try:
                    out.put(("item", item), timeout=WAIT)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
    except BaseException as e:  # noqa: BLE001 - handed to the training thread, raised there
        out.put(("error", e))


def start(stream: Any, produce: Any, *args: Any) -> Iterator:
    """The batches of ``produce(*args, consumed, generator)`` from the stream's position: run in
    place (the stream's own generator) or, with ``stream.prefetch``, ahead in a thread on a copy of
    it. The thread holds no reference to ``stream``, and stops when ``stream`` is collected."""
    if not stream.prefetch:
        return produce(*args, stream.consumed, stream.generator)
    copy = torch.Generator().set_state(stream.generator.get_state())
    ahead = Prefetched(produce(*args, stream.consumed, copy), stream.prefetch)
    weakref.finalize(stream, ahead.close)
    return ahead


def take(stream: Any, items: Iterator) -> tuple[Any, Any]:
    """The next (data, index) of ``items``; the stream's position and generator move past it."""
    data, index, stream.consumed, state = next(items)
    if stream.prefetch:  # the thread's generator stands further on: take the state after this batch
        stream.generator.set_state(state)
    return data, index
