"""The built-in inspect plugin (entry point ``inspect`` of the ``mmalign`` group): the commands that
examine a config, a trained run or the installed plugins without training, and the demo runner.

- ``mmalign check CONFIG``: validate a config and read its data as training would, loading no
  model weights (:mod:`mmalign_inspect.check`);
- ``mmalign eval CONFIG``: the configured evaluators on a trained run (``output_dir/eval.json``);
- ``mmalign score CONFIG``: the implicit reward of every record's responses
  (``output_dir/scores.jsonl``; from Python, :func:`score`) (:mod:`mmalign_inspect.trained_run`);
- ``mmalign plugins``: every registered name with the plugin that provides it, and ``mmalign demo
  NAME --out DIR``: a registered demo (:mod:`mmalign_inspect.commands`).
"""

import json

from mmalign.cli import add_config_arguments
from mmalign.hookspecs import hookimpl
from mmalign_inspect.commands import demo_arguments, demo_command, plugins_command


def check_command(args) -> None:
    from mmalign.cli import load_checked
    from mmalign_inspect.check import summary

    cfg = load_checked(args, "check")
    print(summary(cfg, args.config))


def eval_command(args) -> None:
    from mmalign.cli import load_checked
    from mmalign_inspect.trained_run import evaluate_config

    cfg = load_checked(args, "eval")
    print(json.dumps(evaluate_config(cfg), indent=1))


def score_command(args) -> None:
    from mmalign.cli import load_checked
    from mmalign_inspect.trained_run import score_config

    cfg = load_checked(args, "score")
    rows = score_config(cfg)
    margins = [r["margin"] for r in rows if "margin" in r]
    summary = f", accuracy {sum(m > 0 for m in margins) / len(margins):.3f}" if margins else ""
    print(f"{len(rows)} records scored{summary}: {cfg.output_dir}/scores.jsonl")


def score(config, *, overrides=None) -> list[dict]:
    """Implicit rewards beta * (s_policy - s_ref) of every record of a trained run (any modality),
    from a Config, a dict or a YAML path: a list of {"record", "reward_chosen", "reward_rejected",
    "margin"}; also written to ``output_dir/scores.jsonl``."""
    from mmalign import as_config
    from mmalign.run_validation import validate_for_run
    from mmalign_inspect.trained_run import score_config

    cfg = as_config(config, overrides)
    validate_for_run(cfg, command="score")
    return score_config(cfg)


@hookimpl
def mmalign_register_commands(register):
    register("plugins", plugins_command, help="list every registered reward, loss, dataset format, "
                                              "evaluator, callback and demo with the plugin that provides it")
    register("demo", demo_command, arguments=demo_arguments, help="run an offline end-to-end demo")
    register("check", check_command, arguments=add_config_arguments,
             help="validate a config (and read its data files) without loading a model: exit 0 with a "
                  "summary, or 2 with the error")
    register("eval", eval_command, arguments=add_config_arguments,
             help="evaluate output_dir/final (or eval.checkpoint) on data.eval")
    register("score", score_command, arguments=add_config_arguments,
             help="write the implicit reward of every record's responses to output_dir/scores.jsonl")


__all__ = ["score"]
