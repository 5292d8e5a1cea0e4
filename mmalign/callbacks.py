"""The base class of training callbacks. Callbacks themselves come from plugins (``plot`` from the
built-in ``metrics`` plugin), registered by name through ``mmalign_register_callbacks``."""

from __future__ import annotations


class Callback:
    """Base class of training callbacks: override what you need (every method is a no-op here).
    Called on the main process only."""

    def on_log(self, step: int, row: dict) -> None:
        """A metrics row was written to metrics.jsonl (every ``train.log_every`` steps)."""

    def on_eval(self, step: int, metrics: dict) -> None:
        """The evaluators ran; ``metrics`` holds their ``eval/...`` values."""

    def on_train_end(self, history: list[dict]) -> None:
        """Training finished; ``history`` holds every row."""
