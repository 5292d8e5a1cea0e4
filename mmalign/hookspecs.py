"""Every hook mmalign calls. A plugin implements some of them with ``@mmalign.hookimpl``.

All hooks take a ``register`` callback (as in simonw's llm): a plugin calls it once per thing it
provides. Pluggy lets an implementation accept fewer arguments than the spec, so a hook can gain
arguments later without breaking plugins written today.

Every plugin comes from the entry-point group ``mmalign``: mmalign's own (text, vlm, diffusion,
losses, metrics, formats) first, installed ones after them, then in-process ones
(:func:`mmalign.register`); a later registration of a name wins, so a plugin can override a
built-in by registering the same name.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("mmalign")
hookimpl = pluggy.HookimplMarker("mmalign")


@hookspec
def mmalign_register_rewards(register: Callable[..., None]) -> None:
    """Register modality plugins (implicit-reward providers).

    Call ``register(name, factory)`` where ``factory`` is a subclass of
    :class:`mmalign.protocol.ModalityPlugin` built as ``factory(model_cfg, data_cfg)``: it loads
    the policy, turns records into batches, batches into :class:`mmalign.scores.Scores`, and
    samples responses. Its class attributes declare what it provides (``score_kind``,
    ``provides_extras``, ``per_unit_scores``, ``deterministic_collate``, ``data_options``) and its
    static ``check_config(model_cfg, data_cfg)`` checks the plugin's own keys before any model loads.
    Built-in names: ``text``, ``reward_model`` (mmalign_text), ``vlm``, ``diffusion``, ``control``.
    """


@hookspec
def mmalign_register_losses(register: Callable[..., None]) -> None:
    """Register preference losses.

    Call ``register(spec)`` with a :class:`mmalign.losses.LossSpec`: a pure function
    ``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, **options) -> [B]``
    (for ``responses="group"``: ``fn(policy_scores, reference_scores, *, beta, values,
    **options) -> [C]`` with ``values`` the batch source's per-response values, e.g. advantages)
    and what it needs: ``needs_reference``, ``responses`` (pair, single, group), ``lengths``,
    ``per_unit``, ``extras``, ``score_kinds``; checked against the plugin once at start-up.
    Built-in: the DPO family (``mmalign plugins`` lists them; docs/losses.md documents them),
    ``kto``, ``bradley_terry``, ``unlikelihood`` (mmalign_text), ``mdpo`` (mmalign_vlm),
    ``mapo`` (mmalign_diffusion).
    """


@hookspec
def mmalign_register_datasets(register: Callable[..., None]) -> None:
    """Register record readers (data formats).

    Call ``register(name, reader, suffixes=(...))`` where ``reader(path) -> list[Record]`` reads a
    file and raises :class:`mmalign.errors.DataError` naming the file and line on bad input.
    ``suffixes`` lets ``format: auto`` pick the reader from the file name; ``folders=predicate``
    from a directory's layout; ``schemes=("hf://",)`` hands it data paths written with that prefix.
    Built-in: ``jsonl``, ``json`` (mmalign_formats); ``parquet``, ``csv``, ``arrow``, ``hf``
    (mmalign_hf_datasets), ``memory`` (mmalign_hf_datasets: ``train_dataset=`` of ``mmalign.train``);
    ``npz`` (mmalign_control).
    """


@hookspec
def mmalign_register_evaluators(register: Callable[..., None]) -> None:
    """Register evaluators.

    Call ``register(name, evaluator)`` where ``evaluator(ctx) -> dict[str, float]`` receives an
    :class:`mmalign.evaluate.EvalContext` (policy, reference, modality plugin, held-out examples).
    ``register(name, evaluator, modalities=("vlm",))`` declares the modalities it applies to, so a
    config that names it for another modality is refused before training (default: every one).
    Built-in: ``reward_accuracy`` (implicit-reward accuracy and margin on held-out pairs),
    ``chair``, ``pope`` (mmalign_vlm), ``diffusion_accuracy`` (mmalign_diffusion),
    ``addition_accuracy`` (mmalign_text: the rl demo's held-out greedy accuracy),
    ``online_rewards`` (mmalign_rl: an online run's reward functions on answers to data.eval's prompts),
    ``control_return`` (mmalign_control: gymnasium rollouts of the mean action).
    """


@hookspec
def mmalign_register_callbacks(register: Callable[..., None]) -> None:
    """Register training callbacks (loggers, step observers).

    Call ``register(name, factory)`` where ``factory(output_dir)`` returns a
    :class:`mmalign.callbacks.Callback` (``on_log(step, metrics)``, ``on_eval(step, metrics)``,
    ``on_samples(step, samples)``, ``on_train_end(history)``; each a no-op unless overridden), called on the main process; a
    factory that declares ``cfg`` or ``accelerator`` keywords also receives them.
    ``register(name, factory, check=check)``: ``check(cfg)`` checks the config keys the callback
    reads before anything loads, raising :class:`mmalign.errors.ConfigError` naming the key;
    ``implied_by=KEY``: a set config key (``train.report_to``) adds the callback, unlisted.
    Built-in: ``plot`` (PNG of loss, reward accuracy and margins), ``trackers`` (every row to
    accelerate's experiment trackers: ``train.report_to``), ``push_to_hub`` (hub: ``final/`` to the
    Hugging Face Hub after training: ``train.push_to_hub``), ``samples`` (``eval.samples``: the
    policy's answers at each evaluation to output_dir/samples/).
    """


@hookspec
def mmalign_register_final_files(register: Callable[..., None]) -> None:
    """Register writers of files that go into ``final/`` beside the trained model.

    Call ``register(name, write)`` where ``write(directory, config, history)`` writes its files into
    ``directory`` (``config``: the resolved config as a mapping, as ``config.yaml`` holds it;
    ``history``: the metrics rows). The run store calls them with the final model (``local``: on
    the main process after the modality plugin's ``save``, inside ``.tmp-final``, so the files
    appear with the model or not at all). Built-in:
    ``model_card`` (hub: ``README.md``, a Hugging Face model card).
    """


@hookspec
def mmalign_register_scorers(register: Callable[..., None]) -> None:
    """Register response scorers (reward functions): a trained reward model, a rule-based
    verifier, a gold scorer, PickScore / HPS / aesthetic predictors for images.

    Call ``register(name, factory)`` where ``factory(**options)`` returns a callable
    ``scorer(prompts, responses, **columns) -> list[float]`` (higher is better), one value per
    response; ``columns`` are the record's other fields, one per response (``images``, a
    verifier's ``answer``), of which a scorer receives those it names as parameters. Used as the
    reward functions of online algorithms, by Best-of-N sampling and by evaluations. Built-in:
    ``reward_model`` (text), ``sentiment`` (the text demo's gold reward), ``addition_exact`` (the
    rl demo's verifier), ``shapes_hallucination`` (the vlm-rl demo's verifier), ``brightness`` (the
    diffusion demo world's gold score, for DDPO and online Diffusion-DPO), ``clip_preference``
    (PickScore-style) and ``aesthetic`` (LAION-style) image reward models from local paths.
    """


@hookspec
def mmalign_register_demos(register: Callable[..., None]) -> None:
    """Register offline end-to-end demos for ``mmalign demo NAME --out DIR``.

    Call ``register(name, run)`` where ``run(out_dir, **options) -> dict`` writes ``report.json``
    and PNG plots into ``out_dir`` and returns the report. Built-in: ``text``, ``vlm``,
    ``diffusion``, ``text-frontier`` (what ``mmalign sweep`` runs), ``rl`` (a verifiable reward:
    SFT then GRPO on 2-digit addition), ``vlm-rl`` (GRPO against a hallucination verifier),
    ``diffusion-rl`` (DDPO, GRPO and online Diffusion-DPO against the diffusion world's gold score),
    ``control`` (CPL against behaviour cloning on Pendulum-v1).
    """


@hookspec
def mmalign_register_commands(register: Callable[..., None]) -> None:
    """Register commands of the ``mmalign`` CLI.

    Call ``register(name, run, arguments=add_arguments, help="...")`` where
    ``add_arguments(parser)`` adds the command's arguments to its ``argparse`` sub-parser and
    ``run(args)`` carries it out (raise :class:`mmalign.errors.MmalignError` for bad input: exit
    code 2). ``train`` is the core's and keeps its name. Built-in: ``plugins``, ``demo``, ``check``,
    ``eval`` and ``score`` (mmalign_inspect), ``sweep`` (mmalign_text: the reward-KL frontier of the
    text demo), ``push`` (mmalign_hub: a run's ``final/`` and model card to the Hugging Face Hub).
    """


@hookspec
def mmalign_register_algorithms(register: Callable[..., None]) -> None:
    """Register online algorithms (``algorithm.name`` in the config).

    Call ``register(algorithm)`` with a :class:`mmalign.algorithms.Algorithm`: a batch source that
    samples responses with the plugin's ``sample``, scores them with reward functions and computes
    advantages (``make_source``), the group loss its batches train, and the dataclass of its
    options. Built-in: ``grpo``, ``dr_grpo``, ``dapo``, ``gspo``, ``rloo``, ``remax``, ``reinforce_pp``, ``ppo``,
    ``online_dpo`` (mmalign_rl).
    """


@hookspec
def mmalign_register_run_stores(register: Callable[..., None]) -> None:
    """Register run stores (``train.run_store`` in the config): where a run's files go.

    Call ``register(name, factory)`` where ``factory(cfg, accelerator, log)`` returns a
    :class:`mmalign.run_store.RunStore`, which claims the output, resumes, keeps the metrics rows,
    saves checkpoints and writes ``final/``; ``check=check``: ``check(cfg)`` refuses, before
    anything loads, a place the store cannot write (a ConfigError). Built-in: ``local``
    (mmalign_runs: ``output_dir`` on a file system, with atomic verified checkpoints, the resume
    identity and the folder's lock; its check: output_dir is a writable directory).
    """


@hookspec
def mmalign_register_optimizers(register: Callable[..., None]) -> None:
    """Register optimizers (``train.optimizer`` in the config).

    Call ``register(name, build)`` where ``build(params, train)`` returns a
    ``torch.optim.Optimizer`` over ``params`` (the trainable parameters, float32 master weights)
    with the settings of ``train`` (the config's train section: ``lr``, ``weight_decay``,
    ``adam_betas``). Keywords: ``requires=("module",)``, modules that must be installed (checked
    before anything loads; ``install="pip install ..."`` is the fix named), and ``sharded=False``
    for one refused under FSDP2. Built-in: ``adamw`` (PyTorch), ``adamw_8bit``, ``paged_adamw_8bit``
    and ``paged_adamw_32bit`` (bitsandbytes) (mmalign_optimizers).
    """


@hookspec
def mmalign_register_data_sources(register: Callable[..., None]) -> None:
    """Register data sources: where a run's training and held-out records come from.

    Call ``register(name, source)`` where ``source(cfg, plugin, paired, layout, log)`` returns a
    :class:`mmalign.data.TrainingData` (the batch stream, the held-out examples, the data reports)
    and refuses bad data with a DataError before the run touches ``output_dir``. ``layout`` is
    (batch_size, gradient_accumulation_steps, processes, rank, seed, the data generator,
    data.prefetch). ``data.source`` names the source; with ``auto`` the run asks for ``prompts`` (an
    online algorithm), ``streamed`` (``data.streaming: true``) or ``files``; registering one of
    these names replaces it. ``check=check(cfg)`` refuses settings the source cannot honour before
    anything loads. Built-in: all three (mmalign_data).
    """


@hookspec
def mmalign_register_references(register: Callable[..., None]) -> None:
    """Register reference strategies: where the reference scores s_ref come from.

    Call ``register(name, build)`` where ``build(policy, plugin, cfg, accelerator)`` returns a
    strategy: ``scores(batch, per_unit=False) -> Scores`` under no_grad, and ``shard(accelerator)``,
    called under FSDP2 once the policy is prepared. ``reference.strategy`` names one (``none``
    builds nothing); ``check=check(cfg)`` checks the keys it reads before anything loads. The
    name ``cache`` (registered with ``wraps=True``: not a strategy to name) is what
    ``reference.cache`` (memory | disk) applies: ``cache(run)`` returns a strategy wrapping
    ``run.reference``, called once the run's store has started. Built-in: ``auto``, ``copy``,
    ``disable_adapters`` and ``cache`` (mmalign_reference).
    """
