"""Every hook mmalign calls. A plugin implements some of them with ``@mmalign.hookimpl``.

All hooks take a ``register`` callback (as in simonw's llm): a plugin calls it once per thing it
provides. Pluggy lets an implementation accept fewer arguments than the spec, so a hook can gain
arguments later without breaking plugins written today.

Built-in plugins register first, entry-point plugins (group ``mmalign``) after them, so an installed
plugin can override a built-in by registering the same name.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("mmalign")
hookimpl = pluggy.HookimplMarker("mmalign")


@hookspec
def mmalign_register_rewards(register: Callable[..., None]) -> None:
    """Register modality plugins (implicit-reward providers).

    Call ``register(name, factory)`` where ``factory(model_cfg, data_cfg)`` returns an object that
    follows :class:`mmalign.reward.ImplicitReward`: it loads the policy, turns records into batches
    and batches into per-response scores. The factory may define a static
    ``check_config(model_cfg, data_cfg)`` that checks the plugin's own keys (``model.options``,
    ``model.tiny``) without loading anything; mmalign calls it before any model loads.
    Built-in names: ``text``.
    """


@hookspec
def mmalign_register_losses(register: Callable[..., None]) -> None:
    """Register preference losses.

    Call ``register(spec)`` with a :class:`mmalign.losses.LossSpec`: a pure function
    ``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, **options) -> [B]``
    plus metadata (``needs_reference``, ``paired``). Built-in: sigmoid, ipo, hinge, sft.
    """


@hookspec
def mmalign_register_datasets(register: Callable[..., None]) -> None:
    """Register record readers (data formats).

    Call ``register(name, reader, suffixes=(...))`` where ``reader(path) -> list[Record]`` reads a
    file and raises :class:`mmalign.errors.DataError` naming the file and line on bad input.
    ``suffixes`` lets ``format: auto`` pick the reader from the file name. Built-in: ``jsonl``.
    """


@hookspec
def mmalign_register_evaluators(register: Callable[..., None]) -> None:
    """Register evaluators.

    Call ``register(name, evaluator)`` where ``evaluator(ctx) -> dict[str, float]`` receives an
    :class:`mmalign.evaluate.EvalContext` (policy, reference, modality plugin, held-out examples).
    ``register(name, evaluator, modalities=("vlm",))`` declares the modalities it applies to, so a
    config that names it for another modality is refused before training (default: every one).
    Built-in: ``reward_accuracy`` (implicit-reward accuracy and margin on held-out pairs).
    """


@hookspec
def mmalign_register_callbacks(register: Callable[..., None]) -> None:
    """Register training callbacks (loggers, step observers).

    Call ``register(name, factory)`` where ``factory(output_dir)`` returns an object with any of
    ``on_log(step, metrics)``, ``on_eval(step, metrics)`` and ``on_train_end(history)``.
    Built-in: ``plot`` (PNG of loss, reward accuracy and margins).
    """


@hookspec
def mmalign_register_scorers(register: Callable[..., None]) -> None:
    """Register response scorers (reward functions): a trained reward model, a rule-based
    verifier, a gold scorer, PickScore / HPS / aesthetic predictors for images.

    Call ``register(name, factory)`` where ``factory(**options)`` returns a callable
    ``scorer(prompts, responses, images=None) -> list[float]`` (higher is better). Used by
    Best-of-N sampling and by evaluations. Built-in: ``reward_model`` (text), ``sentiment`` (the
    text demo's gold reward).
    """


@hookspec
def mmalign_register_demos(register: Callable[..., None]) -> None:
    """Register offline end-to-end demos for ``mmalign demo NAME --out DIR``.

    Call ``register(name, run)`` where ``run(out_dir, **options) -> dict`` writes ``report.json``
    and PNG plots into ``out_dir`` and returns the report. Built-in: ``text``.
    """
