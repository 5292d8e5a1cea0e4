"""Held-out evaluation of an online run: the policy answers the prompts of ``data.eval`` and the
run's reward functions score the answers.

``eval.evaluators: [online_rewards]`` reports, every ``train.eval_every`` steps and at the end:
``eval/rewards/mean`` and ``eval/rewards/<scorer>`` (the weighted sum and each reward function),
``eval/completions/mean_length``, and, with a reference, ``eval/kl``: the sampled estimate
E_{y ~ pi}[log pi(y|x) - log pi_ref(y|x)] on those answers. Every evaluation draws with the same
generator (seeded by the run's seed), so the curve compares the policy with itself, not with new
noise. Options (``eval.options.online_rewards``): ``samples_per_prompt`` (1), ``scorers`` (the
algorithm's), and for token plugins ``temperature`` (the algorithm's; 0: greedy) and
``max_new_tokens`` (the algorithm's). Other plugins sample as the run does (diffusion: the DDIM
steps, eta and guidance of ``algorithm.options.sampling``).
"""

from __future__ import annotations

import torch

from mmalign.batches import Batch
from mmalign.errors import ConfigError
from mmalign_rl.source import build_scorers, response_metrics, score_responses

OPTIONS = ("samples_per_prompt", "temperature", "max_new_tokens", "scorers")
TOKEN_OPTIONS = ("temperature", "max_new_tokens")


def online_rewards(ctx) -> dict[str, float]:
    """Evaluator (see the module docstring): ``ctx.examples`` are prompt records."""
    from mmalign.plugins import registry

    options, sampling = _options(ctx, registry())
    scorers = build_scorers(options["scorers"], registry())
    generator = torch.Generator().manual_seed(ctx.seed)
    results: dict[str, list] = {}
    for start in range(0, len(ctx.examples), ctx.batch_size):
        records = ctx.examples[start:start + ctx.batch_size]
        for key, value in _evaluate_chunk(ctx, records, scorers, options, sampling, generator).items():
            results.setdefault(key, []).append((value, len(records)))
    return {key: sum(v * n for v, n in values) / sum(n for _, n in values) for key, values in results.items()}


def _options(ctx, reg) -> tuple[dict, dict]:
    """(the evaluator's options, the keywords of the plugin's ``sample``)."""
    given = ctx.options_for("online_rewards")
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"eval.options.online_rewards.{unknown[0]}: not an option of online_rewards "
                          f"(its options: {', '.join(OPTIONS)}).")
    options = {"samples_per_prompt": 1, "scorers": (ctx.algorithm_options or {}).get("scorers"), **given}
    if not options["scorers"]:
        raise ConfigError("eval.options.online_rewards.scorers: name the reward functions (an online run "
                          "uses algorithm.options.scorers by default).")
    return options, _sampling(ctx, reg, given)


def _sampling(ctx, reg, given: dict) -> dict:
    """The run's own sampling (the plugin's ``sampling_options`` of algorithm.options: a token
    plugin's temperature and length, the diffusion plugin's DDIM steps, eta and guidance), with
    the evaluator's temperature or max_new_tokens in place of the algorithm's."""
    if ctx.algorithm is None:  # an offline run: a token plugin's defaults
        return {"temperature": 1.0, "max_new_tokens": 64, **{k: given[k] for k in TOKEN_OPTIONS if k in given}}
    from mmalign.algorithms import sampling_keywords

    sampling = sampling_keywords(ctx.reward, ctx.algorithm, ctx.algorithm_options, reg)
    for key in TOKEN_OPTIONS:
        if key in given and key not in sampling:
            raise ConfigError(f"eval.options.online_rewards.{key}: the '{ctx.reward.name}' plugin does not sample "
                              f"with {key}; evaluation samples as algorithm.options says. Remove the key.")
    return {**sampling, **{k: given[k] for k in TOKEN_OPTIONS if k in given}}


@torch.no_grad()
def _evaluate_chunk(ctx, records: list, scorers: list, options: dict, sampling: dict, generator) -> dict[str, float]:
    samples = ctx.reward.sample(ctx.policy, records, options["samples_per_prompt"], generator, **sampling)
    rewards, metrics = score_responses(scorers, records, samples.responses)
    metrics["rewards/mean"] = rewards.mean()
    metrics.update(response_metrics(samples, sampling.get("max_new_tokens", 0)))
    if ctx.reference is not None:
        device = next(ctx.policy.parameters()).device
        data = ctx.reward.encode(ctx.reward.to_device(ctx.reward.collate(samples.examples, generator), device))
        with ctx.autocast():
            policy = ctx.reward.score(ctx.policy, data)
        reference = ctx.reference.scores(Batch(data))
        metrics["kl"] = (policy.sums.float() - reference.sums.float()).mean()
    return {key: float(value) for key, value in metrics.items()}
