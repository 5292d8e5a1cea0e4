"""Online algorithms: what replaces the offline data stream when the policy makes its own data.

An algorithm is a batch source (sample responses with ``plugin.sample``, score them with reward
functions, compute advantages; hand out :class:`mmalign.batches.Batch` es with the advantages in
``values``) plus the group loss those batches train (a LossSpec with ``responses="group"``). The
engine loop is the same as offline: it asks the source for micro-batches, scores them with the
plugin, and calls the loss. Algorithms are registered through ``mmalign_register_algorithms``;
``algorithm: {name, options}`` in the config picks one (none: offline preference training).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mmalign.losses.spec import LossSpec


@dataclass(frozen=True)
class Algorithm:
    """An online algorithm, as registered.

    loss:         the group loss its batches train (``responses="group"``; its keyword options are
                  the algorithm's options of the same names), or ``loss(options, registry, where)
                  -> LossSpec`` when the options pick it (online DPO wraps any pair loss of the
                  registry): it raises a ConfigError naming the key on a bad choice
    options:      a dataclass type of its options (``algorithm.options``; typed, checked before
                  anything loads, exit code 2 on a bad value)
    make_source:  ``make_source(ctx: SourceContext) -> source``, a batch source: an object with
                  ``next_batch(plugin, device) -> Batch`` and the data state the checkpoint saves
                  (``consumed``, ``generator``, ``batch_size``, ``accumulation``, ``world``)
    check:        ``check(options, registry)``: names inside the options (reward functions)
                  checked against the registry before anything loads
    source_needs_reference: the SOURCE scores its samples with the reference (REINFORCE++ puts
                  the KL in the reward): the reference is built when ``loss.beta`` > 0 even if
                  the loss declares ``needs_reference=False``; the engine's micro-step then skips
                  its own reference pass (it follows the loss)
    needs_beta:   ``loss.beta`` scales the loss itself (online DPO's implicit reward), not a KL
                  term: 0 is refused before anything loads (the group family takes 0 for no KL)
    """

    name: str
    loss: LossSpec | Callable[[Any, Any, str], LossSpec]
    options: type
    make_source: Callable[["SourceContext"], Any]
    summary: str = ""
    check: Optional[Callable[[Any, Any], None]] = None
    source_needs_reference: bool = False
    needs_beta: bool = False


@dataclass
class SourceContext:
    """What a batch source is built from (by mmalign.run_setup, after the models)."""

    plugin: Any
    policy: Any  # the unwrapped policy: what samples
    reference: Any  # a reference strategy, or None (beta 0 or a reference-free loss)
    records: list  # the prompt records (data.train), each with "prompt" and any other fields
    options: Any  # the algorithm's options (its dataclass)
    beta: float
    seed: int
    batch_size: int  # prompts per micro-batch per process
    accumulation: int
    world: int
    rank: int
    device: Any
    registry: Any
    log: Callable[[str], None] = print
    extras: dict = field(default_factory=dict)
    autocast: Callable = nullcontext  # what the engine scores the policy under (a source scoring it too)
    prepare_model: Callable = lambda model: model  # accelerate's: a model the source trains (PPO's critic), DDP-wrapped


def algorithm_loss(algorithm: Algorithm, options: Any, registry: Any, where: str = "config") -> LossSpec:
    """The loss an algorithm's batches train with these options: its own, or the one they pick."""
    if isinstance(algorithm.loss, LossSpec):
        return algorithm.loss
    return algorithm.loss(options, registry, where)


def build_options(algorithm: Algorithm, options: dict, where: str) -> Any:
    """``algorithm.options`` as the algorithm's dataclass, typed like every config key."""
    from mmalign.config_types import _build

    return _build(algorithm.options, dict(options), "algorithm.options", where)


def sampling_keywords(plugin: Any, name: str, options: dict, registry: Any) -> dict:
    """The keywords of ``plugin.sample`` for online algorithm ``name`` with ``options``
    (algorithm.options): what the plugin's ``sampling_options`` makes of them, as training samples."""
    algorithm = registry.get("algorithms", name, "algorithm.name")
    return plugin.sampling_options(build_options(algorithm, options or {}, "config"))


def check_options(options: Any, where: str, save_every: int = 0) -> Optional[str]:
    """The options' own rules (``problem() -> (key, message) | None``), as a ConfigError; and
    checkpoints only between rollouts: ``train.save_every`` a multiple of the optimizer steps one
    rollout trains (``options.steps_per_rollout``, 1 unless the options say otherwise)."""
    from mmalign.validation import fail

    problem = options.problem() if hasattr(options, "problem") else None
    if problem:
        raise fail(where, *problem)
    steps = getattr(options, "steps_per_rollout", 1)
    if save_every and save_every % steps:
        raise fail(where, "train.save_every", f"is {save_every}, but each rollout trains {steps} optimizer "
                                              f"steps (algorithm.options rollout_steps x epochs) and a "
                                              f"checkpoint holds no rollout in flight: use a multiple of {steps}.")
    return None
