"""``final/README.md``: a Hugging Face model card, written with ``final/`` (inside ``.tmp-final``,
so the two appear together: the ``model_card`` writer of ``mmalign_register_final_files``) and
refreshed by ``mmalign push`` for the repository it goes to.

The card is YAML front matter (``library_name``, ``base_model`` when it is a Hub id, ``tags``)
then Markdown: the base model, the data, the loss or online algorithm and its settings, the final
metrics, how to load the model with plain transformers / diffusers / peft (the modality plugin's
``how_to_load``) and the versions it was trained with. It is built from the resolved config as a
mapping (``config.yaml``), the metrics rows and the files in ``final/``, so it can be written again
later without loading any weights. Local paths appear by their last component only: a card may be
published.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import yaml

from mmalign.config import HUB_ID
from mmalign.in_memory import weights_source
from mmalign_runs.safe_files import write_atomic

CARD = "README.md"
# loss.name -> the method's usual name, as a tag (sigmoid is DPO's loss)
METHOD_TAGS = {"sigmoid": "dpo"}


def write_model_card(directory: Path, config: dict, history: list[dict], ref: str) -> None:
    """``directory/README.md`` for the model ``save`` wrote there, loaded from ``ref``."""
    write_atomic(Path(directory) / CARD, model_card(config, history, directory, ref))


def model_card(config: dict, history: list[dict], directory: Path, ref: str) -> str:
    """The card's text. ``config``: the resolved config as a mapping (:func:`mmalign.config.to_dict`);
    ``history``: the metrics rows; ``ref``: the path or Hub id the loading code names."""
    from mmalign import __version__

    model, loss, algorithm = config["model"], config["loss"], config.get("algorithm") or {}
    method, online = algorithm.get("name") or loss["name"], bool(algorithm.get("name"))
    plugin, summary = _registered(model["reward"], method, online)
    base = weights_source(model.get("name_or_path"))  # a model passed from Python: the path it came from
    loading = plugin.how_to_load(Path(directory), ref, base) if plugin else None
    meta: dict[str, Any] = {"library_name": loading[0] if loading else "mmalign"}
    if base and HUB_ID.fullmatch(base) and not Path(base).exists():
        meta["base_model"] = base
    meta["tags"] = list(dict.fromkeys(["mmalign", METHOD_TAGS.get(method, method), model["reward"],
                                       *(["lora"] if model.get("lora") else [])]))
    title = Path(config.get("output_dir", "model")).name
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {title}", "",
             f"A {model['reward']} model trained with mmalign {__version__} "
             f"({'online algorithm' if online else 'loss'} `{method}`).", "",
             "## Training", "", "| setting | value |", "| --- | --- |",
             *[f"| {k} | {v} |" for k, v in _settings(config, summary)], "",
             "## Final metrics", "", *_metrics(history), "",
             "## How to load", "", *_loading(loading, model["reward"]), "",
             "## Framework versions", "", *_versions(__version__, loading), ""]
    return "\n".join(lines)


def _registered(reward: str, method: str, online: bool) -> tuple[Any, str]:
    """(the modality plugin's class or None, the loss's one-line summary)."""
    from mmalign.plugins import registry

    reg = registry()
    plugin = reg.entries["rewards"].get(reward)
    found = reg.entries["algorithms" if online else "losses"].get(method)
    return (plugin.obj if plugin else None), (getattr(found.obj, "summary", "") if found else "")


def _shown(value: Any) -> str:
    """A path by its last component (a card may be published); anything else (a Hub id) as is."""
    if value is None:
        return "none"
    text = str(value)
    return f"`{Path(text).name}`" if Path(text).is_absolute() or Path(text).exists() else f"`{text}`"


def _settings(config: dict, summary: str) -> list[tuple[str, str]]:
    model, data, loss, train = config["model"], config["data"], config["loss"], config["train"]
    algorithm = config.get("algorithm") or {}
    source = weights_source(model.get("name_or_path"))
    if source:
        base = _shown(source)
    elif model.get("name_or_path"):
        base = "a model object passed to `mmalign.train()`"
    else:
        kind = (model.get("tiny") or {}).get("model_type", "the plugin's default type")
        base = f"built from `model.tiny` ({kind}, random weights)"
    lora = model.get("lora")
    rows = [("base model", base), ("modality", f"`{model['reward']}`"),
            ("fine-tuning", f"LoRA (r {lora['r']}, alpha {lora['alpha']}, modules {_json(lora['target_modules'])})"
             if lora else "full"),
            ("training data", _shown(data.get("train"))),
            ("held-out data", _shown(data["eval"]) if data.get("eval") else
             f"last {data['eval_size']} training records" if data.get("eval_size") else "none")]
    if algorithm.get("name"):
        rows.append(("online algorithm", f"`{algorithm['name']}`{f': {summary}' if summary else ''}, "
                                         f"options {_json(algorithm.get('options') or {})}"))
        rows.append(("beta (KL to the reference)", f"{loss['beta']}"))
    else:
        rows.append(("loss", f"`{loss['name']}`{f': {summary}' if summary else ''}"))
        rows.append(("beta", f"{loss['beta']}"))
        rows.append(("loss options", _json(loss.get("options") or {})))
    if loss.get("sft_weight"):
        rows.append(("sft_weight (NLL of the chosen response)", f"{loss['sft_weight']}"))
    steps = train.get("max_steps") or f"{train['epochs']} epochs"
    rows += [("optimizer steps", f"{steps}"),
             ("batch", f"{train['batch_size']} per process x {train['gradient_accumulation_steps']} accumulation"),
             ("learning rate", f"{train['lr']} (AdamW, {train['lr_scheduler']} schedule)"),
             ("precision", f"weights {model.get('dtype', 'float32')}, compute {_compute(model, train)}"),
             ("seed", f"{config.get('seed', 0)}")]
    return rows


def _compute(model: dict, train: dict) -> str:
    """train.precision, or what "no" means for model.dtype (see mmalign/precision.py)."""
    from mmalign.precision import AUTOCAST_OF_DTYPE

    chosen = train.get("precision", "no")
    return chosen if chosen != "no" else AUTOCAST_OF_DTYPE.get(model.get("dtype", "float32"), "float32")


def _json(value: Any) -> str:
    return f"`{json.dumps(value)}`".replace("|", "\\|")


def _metrics(history: list[dict]) -> list[str]:
    """The last row, without the step's wall-clock times."""
    if not history:
        return ["No metrics were logged."]
    last = history[-1]
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in last.items() if not k.startswith("time/")]
    return [f"At step {last.get('step')} (the last row of `metrics.jsonl`):", "",
            "| metric | value |", "| --- | --- |", *rows]


def _loading(loading: tuple[str, str] | None, reward: str) -> list[str]:
    if loading is None:
        return [f"Load it with the `{reward}` plugin of mmalign (`mmalign eval`, `mmalign score`)."]
    return ["```python", loading[1].rstrip(), "```"]


def _versions(version: str, loading: tuple[str, str] | None) -> list[str]:
    names = ["torch", "transformers", *([loading[0]] if loading and loading[0] != "transformers" else [])]
    found = [f"- mmalign {version}"]
    for name in names:
        try:
            found.append(f"- {name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def write_final_card(directory: Path, config: dict, history: list[dict]) -> None:
    """The ``model_card`` final-file writer (``mmalign_register_final_files``): the card of a run's
    ``final/``, its loading code naming ``train.push_to_hub`` when set, else ``output_dir/final``."""
    train = config.get("train") or {}
    write_model_card(directory, config, history, train.get("push_to_hub") or str(Path(config["output_dir"]) / "final"))
