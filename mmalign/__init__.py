"""mmalign: preference optimization for text LMs, vision-language models and diffusion models,
in one engine built on the implicit reward r = beta * (s_policy - s_reference)."""

from mmalign.callbacks import Callback
from mmalign.config import Config, load_config
from mmalign.errors import ConfigError, DataError, MmalignError
from mmalign.hookspecs import hookimpl
from mmalign.plugins import register
from mmalign.scores import Scores, implicit_reward

__version__ = "0.1.0"


def train(config, *, model=None, ref_model=None, tokenizer_or_processor=None, train_dataset=None,
          eval_dataset=None, resume=None, overrides=None, log=print, overwrite=False, force_resume=False,
          callbacks=()):
    """Train from a Config, a dict or a YAML path. Returns an :class:`mmalign.engine.TrainResult`.

    Objects you already hold, in place of config keys (see :mod:`mmalign.in_memory`):
    ``model`` (``model.name_or_path``): a transformers ``PreTrainedModel``, a PEFT model or a
    diffusers pipeline, trained in place as it is (its dtype and device; ``model.lora`` attaches
    adapters to it); ``ref_model`` (``reference.name_or_path``); ``tokenizer_or_processor``
    (``model.tokenizer``; default: loaded from ``model.name_or_path`` as TRL does);
    ``train_dataset`` / ``eval_dataset`` (``data.train`` / ``data.eval``): a ``datasets.Dataset``
    or a list of dicts. ``overwrite`` / ``force_resume``: as ``mmalign train --overwrite`` /
    ``--force-resume``. ``callbacks``: :class:`mmalign.callbacks.Callback` objects (on the main
    process, after the config's)."""
    import dataclasses

    from mmalign.engine import train as _train
    from mmalign.in_memory import keep

    objects = {"model": model, "ref_model": ref_model, "tokenizer_or_processor": tokenizer_or_processor}
    config = as_config(config, overrides, objects)
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


def as_config(config, overrides=None, objects=None) -> Config:
    """A validated Config from a Config, a dict or a YAML path, with ``overrides`` (``KEY=VALUE``
    strings) and the config keys of the model ``objects`` given to :func:`train`."""
    from mmalign.config import to_dict
    from mmalign.in_memory import object_overrides
    from mmalign.config_file import check_top_level, read_config_file

    given = {name: obj for name, obj in (objects or {}).items() if obj is not None}
    if isinstance(config, Config) and not given and not overrides:
        return config
    if isinstance(config, Config):
        config = to_dict(config)
    if given:  # the config as written, to refuse a model named there too
        data = check_top_level(config, "config") if isinstance(config, dict) else read_config_file(config)
        overrides = [*(overrides or []), *object_overrides(data, given)]
    return load_config(data=config, overrides=overrides) if isinstance(config, dict) else load_config(
        config, overrides)


__all__ = ["as_config", "register", "Scores", "implicit_reward", "Config", "ConfigError", "DataError", "MmalignError", "hookimpl", "load_config", "train",
           "__version__"]
