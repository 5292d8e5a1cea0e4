"""The online batch source: every optimizer step, the policy answers a slice of the prompts.

Each ``next_batch`` call takes this process's next micro-batch of ``batch_size`` prompts from the
prompt stream (a permutation per epoch, exactly as offline: :func:`mmalign.batches.next_slices`),
samples ``samples_per_prompt`` responses to each with the plugin's ``sample``, scores them with the
configured reward functions, computes advantages with the algorithm's estimator, and returns the
groups as one Batch, with ``values`` (advantages, rewards) for the group loss and ``metrics`` for
the log. A rollout is ``rollout_steps`` optimizer steps' worth of micro-batches, sampled at once and
trained ``epochs`` times (:func:`fill_buffer`); with both 1 (the default) the policy that samples a
micro-batch is the one it trains, and the importance ratio is 1.

Checkpoints are written only between rollouts (``at_boundary``): a resumed run samples the next
rollout from the saved weights, exactly as the uninterrupted run did.

An estimator is ``estimate(rewards [C, G], rollout: Rollout) -> (values, metrics)``; the group
family reads only the rewards, ReMax decodes and scores greedy responses through ``rollout``,
REINFORCE++ scores the encoded batch with the policy and the reference (mmalign_rl.reinforce).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from mmalign.batches import Batch, next_slices
from mmalign.errors import ConfigError


@dataclass
class Scorer:
    """A reward function with its weight, and the record fields it takes as keyword columns."""

    name: str
    fn: Callable[..., list]
    weight: float
    columns: frozenset | None  # None: it takes every field (**columns)


def build_scorers(spec: dict, registry: Any) -> list[Scorer]:
    """``{name: weight}`` or ``{name: {weight: w, <option>: value}}`` -> scorers, built once."""
    if not isinstance(spec, dict) or not spec:
        raise ConfigError("algorithm.options.scorers: name the reward functions and their weights, e.g. "
                          "{sentiment: 1.0} (`mmalign plugins` lists the registered scorers).")
    scorers = []
    for name, value in spec.items():
        key = f"algorithm.options.scorers.{name}"
        options = dict(value) if isinstance(value, dict) else {"weight": value}
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"{key}: the weight must be a finite number, got {weight!r}.")
        try:
            fn = registry.get("scorers", name, key)(**options)
        except TypeError as e:
            raise ConfigError(f"{key}: {e}. Give only the scorer's own options next to weight.") from None
        scorers.append(Scorer(name, fn, float(weight), _columns(fn)))
    return scorers


def _columns(fn: Callable) -> frozenset | None:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def score_responses(scorers: list[Scorer], records: list, responses: list[list]) -> tuple[Tensor, dict]:
    """Rewards [C, G] = sum_i w_i * scorer_i, and each scorer's mean (``rewards/<name>``)."""
    counts = [len(group) for group in responses]
    prompts = [r.fields["prompt"] for r, n in zip(records, counts) for _ in range(n)]
    flat = [response for group in responses for response in group]
    fields = {k: [r.fields.get(k) for r, n in zip(records, counts) for _ in range(n)]
              for k in {k for r in records for k in r.fields if k != "prompt"}}
    total = torch.zeros(len(flat))
    metrics = {}
    for scorer in scorers:
        columns = {k: v for k, v in fields.items() if scorer.columns is None or k in scorer.columns}
        values = torch.tensor([float(x) for x in scorer.fn(prompts, flat, **columns)])
        if values.shape != total.shape or not torch.isfinite(values).all():
            raise ConfigError(f"scorer '{scorer.name}' returned {values.numel()} values (need {len(flat)}, "
                              f"one finite number per response).")
        metrics[f"rewards/{scorer.name}"] = values.mean()
        total += scorer.weight * values
    return total.view(len(records), -1), metrics


@dataclass
class Rollout:
    """One micro-batch's rollout as an estimator sees it, beyond the rewards: the prompts, the
    samples, the encoded batch (on the device, what the loss will score) and the micro-batch's
    generator."""

    source: "OnlineSource"
    plugin: Any
    records: list
    samples: Any  # mmalign.protocol.Samples
    data: Any  # plugin.encode(...) of the samples, on the device
    generator: torch.Generator
    _policy_scores: Any = None

    def policy_scores(self) -> Any:
        """The sampling policy's per-unit Scores of the samples (no gradient), computed once."""
        if self._policy_scores is None:
            ctx = self.source.ctx
            with torch.no_grad(), ctx.autocast():
                self._policy_scores = self.plugin.score(ctx.policy, self.data, per_unit=True)
        return self._policy_scores


@dataclass
class OnlineSource:
    """The batch source of an online algorithm (see the module docstring)."""

    ctx: Any  # mmalign.algorithms.SourceContext
    advantages: Callable[[Tensor, Rollout], tuple[dict, dict]]  # rewards [C, G], rollout -> (values, metrics)
    scorers: list[Scorer]
    generator: torch.Generator  # unused for draws (see next_batch); kept as the data state's slot
    consumed: int = 0  # prompts taken, all processes together (the checkpoint's data position)
    buffer: list = field(default_factory=list)  # the rollout's micro-batches still to train, in order

    @property
    def examples(self) -> list:
        return self.ctx.records

    @property
    def batch_size(self) -> int:
        return self.ctx.batch_size

    @property
    def accumulation(self) -> int:
        return self.ctx.accumulation

    @property
    def world(self) -> int:
        return self.ctx.world

    @property
    def seed(self) -> int:
        return self.ctx.seed

    @property
    def per_epoch(self) -> int:
        span = self.batch_size * self.accumulation * self.world
        return len(self.ctx.records) // span * span

    @property
    def examples_per_batch(self) -> int:
        return self.batch_size * self.ctx.options.samples_per_prompt

    @property
    def at_boundary(self) -> bool:
        return not self.buffer

    def source_state(self) -> tuple[dict, dict]:
        return {}, {}

    def load_source_state(self, tensors: dict, meta: dict) -> None:
        pass

    def next_batch(self, plugin: Any, device: torch.device) -> Batch:
        """The rollout's next micro-batch; a new rollout when the last one is trained."""
        if not self.buffer:
            self.buffer = fill_buffer(self, plugin, device)
        return self.buffer.pop(0)


def fill_buffer(source: OnlineSource, plugin: Any, device: torch.device) -> list[Batch]:
    """A rollout: ``rollout_steps x accumulation`` micro-batches of this process, sampled by the
    current policy, then trained ``epochs`` times (epoch e > 0 in an order drawn from the rollout's
    position), ``accumulation`` micro-batches per optimizer step. Each micro-batch's randomness
    comes from a generator seeded by its position in the prompt stream, so the samples do not
    depend on how many processes share a step, and a resumed run draws the same ones. When the
    rollout trains more than one step, the sampling policy's per-unit log-probs are kept as
    ``old_unit_scores`` (the importance ratio's denominator) for a loss that takes that ratio."""
    options = source.ctx.options
    rollout_steps, epochs = options.rollout_steps, options.epochs
    keep_old = rollout_steps * epochs > 1 and options.ratio_needs_old_scores
    start = source.consumed
    batches = []
    for _ in range(rollout_steps * source.accumulation):
        position = source.consumed + source.ctx.rank * source.batch_size
        index = next_slices(source)[source.ctx.rank]
        generator = torch.Generator().manual_seed((source.seed * 1_000_003 + position) % 2 ** 63)
        batches.append(rollout(source, plugin, device, [source.ctx.records[i] for i in index.tolist()],
                               generator, keep_old=keep_old))
    order = list(batches)
    replay = [{k: v for k, v in b.metrics.items() if not k.startswith("time/")} for b in batches]
    for epoch in range(1, epochs):
        shuffle = torch.Generator().manual_seed((source.seed * 1_000_003 + start) % 2 ** 63 + epoch)
        order += [Batch(batches[i].data, None, batches[i].values, replay[i])
                  for i in torch.randperm(len(batches), generator=shuffle).tolist()]
    return order


def rollout(source: OnlineSource, plugin: Any, device: torch.device, records: list,
            generator: torch.Generator, keep_old: bool = False) -> Batch:
    """Sample, score, compute advantages: the Batch of these prompts' groups."""
    options = source.ctx.options
    start = time.perf_counter()
    samples = plugin.sample(source.ctx.policy, records, options.samples_per_prompt, generator,
                            **plugin.sampling_options(options))
    generated = time.perf_counter()
    rewards, metrics = score_responses(source.scorers, records, samples.responses)
    metrics.update({"rewards/mean": rewards.mean(), "rewards/std": rewards.std(),
                    "time/generate": torch.tensor(generated - start),
                    "time/score": torch.tensor(time.perf_counter() - generated)})
    data = plugin.encode(plugin.to_device(plugin.collate(samples.examples, generator), device))
    context = Rollout(source, plugin, records, samples, data, generator)
    values, value_metrics = source.advantages(rewards, context)
    if keep_old:
        values.setdefault("old_unit_scores", context.policy_scores().unit_scores.detach().float())
    metrics.update(value_metrics, **response_metrics(samples, options.max_new_tokens))
    return Batch(data, None, {k: v.to(device) for k, v in values.items()},
                 {k: torch.as_tensor(v).float() for k, v in metrics.items()})


def response_metrics(samples: Any, max_new_tokens: int) -> dict[str, Tensor]:
    """Response length mean and max, the share cut at max_new_tokens without an end (token
    plugins; ``finished`` in the trajectory says which responses ended with EOS), and, when the
    sampler recorded ``entropy_sums``, the policy's entropy per sampled token:

        entropy = sum_{responses, tokens} H_t / sum_{responses} length
    """
    trajectory = samples.trajectory if isinstance(samples.trajectory, dict) else {}
    ids = [len(c) for group in trajectory.get("completion_ids", []) for c in group]
    if not ids:
        return {}
    lengths = torch.tensor(ids, dtype=torch.float)
    finished = torch.tensor([f for group in trajectory.get("finished", []) for f in group] or [False] * len(ids))
    metrics = {"completions/mean_length": lengths.mean(), "completions/max_length": lengths.max(),
               "completions/truncated": ((lengths >= max_new_tokens) & ~finished).float().mean()}
    if "entropy_sums" in trajectory:
        total = sum(h for group in trajectory["entropy_sums"] for h in group)
        metrics["entropy"] = torch.tensor(total / max(float(lengths.sum()), 1.0))
    return metrics
