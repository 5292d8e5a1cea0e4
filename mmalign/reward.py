"""The modality-plugin protocol: the only thing the engine knows about a modality.

A plugin turns records into batches and batches into per-response **scores**; the engine turns
policy and reference scores into implicit rewards ``r = beta * (s_policy - s_reference)`` and the
loss into a scalar. ``score`` must be deterministic given the batch (all randomness, such as
diffusion noise and timesteps, is drawn in ``collate`` from the run's generator), so that the
engine can call it for the policy (with grad) and the reference (without).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mmalign.data import Record


@dataclass
class PairScores:
    """Scores of a batch. ``rejected`` is None for unpaired (SFT) batches.

    chosen, rejected:            [B] score of each response
    chosen_lengths, rejected_lengths: [B] number of scored units (response tokens; 1 for diffusion)
    """

    chosen: Tensor
    rejected: Optional[Tensor]
    chosen_lengths: Tensor
    rejected_lengths: Optional[Tensor]
    # Further scores a plugin computes for losses that ask for them (e.g. mDPO's
    # "chosen_corrupted": the chosen response on a corrupted image), each [B].
    extras: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class ImplicitReward(Protocol):
    """What a modality plugin provides. Built by ``factory(model_cfg, data_cfg)``."""

    name: str

    def load_policy(self) -> nn.Module:
        """The trainable model: ``from_pretrained`` of a path/hub id, or built from a tiny config;
        with LoRA adapters attached when configured."""

    def load_reference(self, name_or_path: str) -> nn.Module:
        """A separate (frozen) reference model from a path/hub id."""

    def prepare(self, record: Record, *, paired: bool) -> Any:
        """Validate and pre-process one record (tokenize, check images). Raise
        :class:`mmalign.errors.DataError` naming ``record.where`` for bad input, or
        :class:`mmalign.errors.SkipRecord` for a valid but unusable record (counted)."""

    def collate(self, examples: list[Any], generator: torch.Generator) -> Any:
        """Examples -> a batch on CPU. All randomness is drawn here, from ``generator``."""

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to ``device``."""

    def score(self, model: nn.Module, batch: Any) -> PairScores:
        """Deterministic scores of the batch's responses under ``model``."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write ``model`` (or only its adapter) in the format plain ``from_pretrained`` loads."""

    def load_weights(self, model: nn.Module, directory: Path) -> None:
        """Load weights written by ``save`` into ``model`` in place (``--resume``)."""

    def load_trained(self, directory: Path) -> nn.Module:
        """A fresh model from a directory written by ``save`` (``mmalign eval``)."""


# Optional members the engine looks for (``getattr``), documented in docs/plugin-hooks.md:
#   deterministic_collate: bool         collate draws no randomness, so ``reference.cache`` may
#                                       score each record's reference once
#   content_fingerprint(examples) -> str  a hash of what records point to outside the data file
#                                       (image bytes), part of the on-disk reference-cache key
# and on the factory, for ``mmalign check`` (mmalign/check.py):
#   record_checker(model_cfg, data_cfg)  an object with ``prepare``, built without loading weights
