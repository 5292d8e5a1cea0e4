"""mmalign: preference optimization for text LMs, vision-language models and diffusion models,
in one engine built on the implicit reward r = beta * (s_policy - s_reference)."""

from mmalign.callbacks import Callback
from mmalign.config import Config, load_config
from mmalign.errors import ConfigError, DataError, MmalignError
from mmalign.hookspecs import hookimpl
from mmalign.plugins import register
from mmalign.scores import Scores, implicit_reward

__version__ = "0.1.0"


def train(config, *, train_dataset=None, eval_dataset=None, resume=None, overrides=None, log=print,
          overwrite=False, force_resume=False, callbacks=()):
    """Train from a Config, a dict or a YAML path. Returns an :class:`mmalign.engine.TrainResult`.
    ``train_dataset`` / ``eval_dataset``: a ``datasets.Dataset`` or a list of dicts, in place of
    ``data.train`` / ``data.eval`` (see :mod:`mmalign.in_memory`). ``overwrite`` /
    ``force_resume``: as ``mmalign train --overwrite`` / ``--force-resume``. ``callbacks``:
    :class:`mmalign.callbacks.Callback` objects (on the main process, after the config's)."""
    import dataclasses

    from mmalign.engine import train as _train
    from mmalign.in_memory import keep

    if not isinstance(config, Config):
        config = load_config(config, overrides) if not isinstance(config, dict) else load_config(
            data=config, overrides=overrides)
    given = {"train": train_dataset, "eval": eval_dataset}
    addresses = {key: keep(f"{key}_dataset", value) for key, value in given.items() if value is not None}
    if addresses:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, **addresses))
    not_callbacks = [c for c in callbacks if not isinstance(c, Callback)]
    if not_callbacks:
        raise TypeError(f"callbacks: {not_callbacks[0]!r} is not a mmalign.callbacks.Callback; subclass it and "
                        f"override on_log / on_eval / on_samples / on_train_end.")
    return _train(config, resume=resume, log=log, overwrite=overwrite, force_resume=force_resume,
                  callbacks=tuple(callbacks))


def score(config, *, overrides=None):
    """Implicit rewards beta * (s_policy - s_ref) of every record of a trained run (any modality):
    a list of {"record", "reward_chosen", "reward_rejected", "margin"}; also written to
    ``output_dir/scores.jsonl``."""
    from mmalign.evaluate_cli import score_config

    if not isinstance(config, Config):
        config = load_config(config, overrides) if not isinstance(config, dict) else load_config(
            data=config, overrides=overrides)
    return score_config(config)


__all__ = ["score", "register", "Scores", "implicit_reward", "Config", "ConfigError", "DataError", "MmalignError", "hookimpl", "load_config", "train",
           "__version__"]
