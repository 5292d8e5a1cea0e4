"""The modality-plugin protocol: the only thing the engine knows about a modality.

A plugin turns records into batches and batches into :class:`mmalign.scores.Scores`; the engine
turns policy and reference scores into implicit rewards ``r = beta * (s_policy - s_reference)``
and a loss. ``score`` must be deterministic given the batch (all randomness, such as diffusion
noise and timesteps, is drawn in ``collate`` from the run's generator), so that the engine can
call it for the policy (with grad) and the reference (without). ``sample`` draws responses from a
model, which the same plugin turns back into a batch (online training, Best-of-N).

A plugin subclasses :class:`ModalityPlugin`, implements the required methods and overrides the
optional members it has; the factory registered through ``mmalign_register_rewards`` is the
class itself (``factory(model_cfg, data_cfg)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from mmalign.errors import ConfigError
from mmalign.scores import Scores


@dataclass
class Samples:
    """``n`` responses sampled for each of C contexts.

    contexts:   the C contexts as given (a record's context fields: ``prompt``, ``image``...)
    responses:  C lists of n decoded responses (text, PIL images) for reward functions
    examples:   C group examples that ``collate`` turns into a batch scored as Scores [C, n]
    trajectory: what the sampler recorded (token ids; diffusion latents and timesteps per step)
    """

    contexts: list[Any]
    responses: list[list[Any]]
    examples: list[Any]
    trajectory: Any = None


class ModalityPlugin:
    """Base class of modality plugins: required methods raise, optional members have defaults."""

    name: ClassVar[str] = ""
    #: what a score is: "log_prob" (summed log-probs: text, VLM), "denoising" (negative weighted
    #: denoising error: diffusion), "reward" (a reward model's output). Losses declare the kinds
    #: they are defined on (ORPO's odds need log-probs).
    score_kind: ClassVar[str] = "log_prob"
    #: collate draws no randomness: reference scores may be cached per record, and with several
    #: processes each collates only its own micro-batch
    deterministic_collate: ClassVar[bool] = False
    #: every extra score ``score`` can fill (``extra_scores()``: those it fills with this config)
    provides_extras: ClassVar[tuple[str, ...]] = ()
    #: score(..., per_unit=True) fills Scores.unit_scores / unit_mask
    per_unit_scores: ClassVar[bool] = False
    #: score(..., per_unit=True, units=slice) computes only those units (the others 0, without a
    #: graph), at the cost of those units alone, and ``unit_count(batch)`` says how many there are:
    #: an update then backpropagates unit by unit (mmalign/unit_chunks.py; diffusion: DDPO's steps)
    unit_chunks: ClassVar[bool] = False
    #: the plugin's own ``data.*`` keys: a dataclass type (see docs/configuration.md), or None
    data_options: ClassVar[Optional[type]] = None

    # --- configuration (static: run before anything loads) -----------------------------------------
    @staticmethod
    def check_config(model_cfg: Any, data_cfg: Any) -> None:
        """Check the plugin's own keys (``model.options``, ``model.tiny``) without loading anything."""

    @classmethod
    def record_checker(cls, model_cfg: Any, data_cfg: Any) -> Any:
        """An object with ``prepare``, built without loading model weights (``mmalign check``).
        The plugin itself by default; override it when construction loads weights."""
        return cls(model_cfg, data_cfg)

    # --- models ------------------------------------------------------------------------------------
    def load_policy(self) -> nn.Module:
        """The trainable model (``from_pretrained`` or built from ``model.tiny``), LoRA attached
        when configured."""
        raise NotImplementedError

    def load_reference(self, name_or_path: str) -> nn.Module:
        """A separate (frozen) reference model from a path or hub id."""
        raise NotImplementedError

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write ``model`` (or its adapter) in the format plain ``from_pretrained`` loads."""
        raise NotImplementedError

    def load_weights(self, model: nn.Module, directory: Path) -> None:
        """Load weights written by ``save`` into ``model`` in place (``--resume``)."""
        raise NotImplementedError

    def load_trained(self, directory: Path) -> nn.Module:
        """A fresh model from a directory written by ``save`` (``mmalign eval``)."""
        raise NotImplementedError

    @classmethod
    def how_to_load(cls, directory: Path, ref: str, base: Optional[str]) -> Optional[tuple[str, str]]:
        """(library name, Python code) loading what ``save`` wrote into ``directory`` with the plain
        libraries (transformers, diffusers, peft), the model named ``ref`` (a path or Hub id) and its
        base ``base`` (``model.name_or_path``; None for a ``model.tiny`` base): the model card's "How
        to load". None: the card says to load it through mmalign."""
        return None

    # --- data --------------------------------------------------------------------------------------
    def prepare(self, record: Any, *, paired: bool) -> Any:
        """Validate and pre-process one record. Raise DataError naming ``record.where`` for bad
        input, or SkipRecord for a valid but unusable record (counted)."""
        raise NotImplementedError

    def collate(self, examples: list[Any], generator: torch.Generator) -> Any:
        """Examples -> a batch on CPU. All randomness is drawn here, from ``generator``."""
        raise NotImplementedError

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move the batch's tensors to ``device`` (nothing else: encoding is :meth:`encode`)."""
        return move_tensors(batch, device)

    def encode(self, batch: Any) -> Any:
        """Run the frozen encoders a batch needs before scoring (diffusion: VAE and text
        encoders), once per batch, shared by the policy and reference passes."""
        return batch

    def content_fingerprint(self, examples: list[Any]) -> str:
        """A hash of what the records point to outside the data file (image bytes): part of the
        reference cache's and the run identity's key."""
        return ""

    def batch_counts(self, batch: Any) -> dict[str, Any]:
        """What one scoring pass of ``batch`` (as ``encode`` returned it) processes, for the log's
        rates: ``{"tokens": n}`` (the non-padding tokens of the forward) or ``{"images": n}``, n an
        int or a 0-dim tensor (left on the device: read once per metrics row). ``{}``: the plugin
        cannot say, and the run logs no such rate."""
        return {}

    # --- scores and samples ------------------------------------------------------------------------
    def score(self, model: nn.Module, batch: Any, *, per_unit: bool = False) -> Scores:
        """Deterministic scores of the batch's responses under ``model``."""
        raise NotImplementedError

    def unit_count(self, batch: Any) -> int:
        """The number of units U of ``score(batch, per_unit=True)`` (plugins with ``unit_chunks``)."""
        raise NotImplementedError(f"the '{self.name}' plugin does not score units one by one.")

    def extra_scores(self) -> tuple[str, ...]:
        """Names of the extra scores ``score`` fills with this configuration."""
        return self.provides_extras

    def extra_hint(self, name: str) -> str:
        """How to make the plugin compute the extra score ``name`` (appended to the error)."""
        return ""

    def sample(self, model: nn.Module, contexts: list[Any], n: int, generator: torch.Generator,
               **options: Any) -> Samples:
        """Draw ``n`` responses per context from ``model`` with randomness from ``generator``.
        ``options`` (as the plugin supports them): ``max_new_tokens``, ``temperature``, ``top_p``;
        ``temperature=0`` asks for greedy decoding (the most likely response, no randomness; ReMax's
        baseline), which a token plugin implements as ``do_sample=False``."""
        raise NotImplementedError(f"the '{self.name}' plugin cannot sample responses.")

    @classmethod
    def sampling_options(cls, options: Any) -> dict:
        """The keywords the online source passes to :meth:`sample`, from an online algorithm's
        options (``algorithm.options``); static, checked before anything loads (ConfigError naming
        the key). Token plugins sample with ``max_new_tokens``, ``temperature`` and ``top_p``; a
        plugin with controls of its own (diffusion: steps, eta, guidance) overrides this and reads
        them from ``options.sampling``."""
        if getattr(options, "sampling", None):
            raise ConfigError(f"algorithm.options.sampling: the '{cls.name}' plugin has no sampling options "
                              f"of its own; set max_new_tokens, temperature and top_p in algorithm.options.")
        return {k: getattr(options, k) for k in ("max_new_tokens", "temperature", "top_p") if hasattr(options, k)}

    def use_sharded_policy(self) -> None:
        """Called by the engine right after construction when the policy will be sharded (FSDP2).
        A plugin that computes a forward input from the model's own weights outside its forward
        (image features merged into token embeddings) must then score through the model's own
        forward, or FSDP drops those gradients (mmalign.sharding.run_as_forward); it raises
        ConfigError for an option that cannot work sharded."""

    # --- a value model (PPO's critic), for plugins that support one -------------------------------
    def load_value_model(self, policy: nn.Module, name_or_path: Optional[str]) -> nn.Module:
        """A critic with one value per scored unit, in fp32: from ``name_or_path``, or (None) from
        the policy's own weights with a fresh value head."""
        raise ConfigError(f"the '{self.name}' plugin has no value model: choose an algorithm without "
                          f"a critic (grpo, rloo, remax, reinforce_pp).")

    def unit_values(self, model: nn.Module, batch: Any) -> Tensor:
        """V of the state before each scored unit, [C, k, U], aligned with ``score(batch,
        per_unit=True).unit_scores`` (0 on padding); differentiable in ``model``'s weights."""
        raise ConfigError(f"the '{self.name}' plugin has no value model.")


def move_tensors(batch: Any, device: torch.device) -> Any:
    """A dataclass (or tensor, list, dict) with every tensor moved to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: move_tensors(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_tensors(v, device) for v in batch)
    if isinstance(batch, dict):
        return {k: move_tensors(v, device) for k, v in batch.items()}
    return batch
