"""Objects handed to :func:`mmalign.train` from Python, as TRL's trainers take them: datasets
(``train_dataset=``, ``eval_dataset=``: a ``datasets.Dataset`` or a list of dicts) and models
(``model=``, ``ref_model=``: a transformers ``PreTrainedModel``, a PEFT model or a diffusers
pipeline; ``tokenizer_or_processor=``).

The object is kept in this process under a ``memory://`` address that ends with a fingerprint of
its content, and the config key (``data.train``, ``model.name_or_path``, ``model.tokenizer``,
``reference.name_or_path``) is set to that address. Datasets are read through the reader
registered for the scheme (mmalign_hf_datasets); a modality plugin takes a kept model where it
would call ``from_pretrained`` (:func:`held`). Validation, the data report and the resume check
(the address, with its fingerprint, identifies the data and the initial weights) work unchanged.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from mmalign.errors import ConfigError

MEMORY_SCHEME = "memory://"
_OBJECTS: dict[str, Any] = {}
_FOREIGN_WEIGHTS: set[str] = set()  # addresses of kept models whose weights are not their path's


def keep(name: str, dataset: Any) -> str:
    """Keep ``dataset`` for this process; its ``memory://NAME-FINGERPRINT`` address."""
    address = f"{MEMORY_SCHEME}{name}-{fingerprint(dataset, name)[:16]}"
    _OBJECTS[address] = dataset
    return address


def keep_object(name: str, obj: Any) -> str:
    """Keep a model, pipeline, tokenizer or processor; its ``memory://NAME-FINGERPRINT`` address,
    the fingerprint taken over the object's weights (and tokenizer files) as they are now."""
    address = f"{MEMORY_SCHEME}{name}-{object_fingerprint(obj)[:16]}"
    _OBJECTS[address] = obj
    return address


def lookup(address: str) -> Any:
    if address not in _OBJECTS:
        raise ConfigError(f"'{address}' names an object passed to mmalign.train() from Python, which exists "
                          f"only in that process. Pass it again (train_dataset=..., model=...), or save it "
                          f"(dataset.to_json('train.jsonl'), model.save_pretrained(DIR)) and set the config "
                          f"key to that path.")
    return _OBJECTS[address]


def held(value: Optional[str]) -> Any:
    """The object kept under ``value`` when it is a ``memory://`` address, else None (a path or
    Hub id to load from)."""
    return lookup(value) if isinstance(value, str) and value.startswith(MEMORY_SCHEME) else None


def source_name(value: Optional[str]) -> Optional[str]:
    """Where the model behind a config value can be loaded from: the value itself (a path or Hub
    id), or for a kept object the ``name_or_path`` it was loaded from (None when it has none: a
    model built in memory)."""
    if not (isinstance(value, str) and value.startswith(MEMORY_SCHEME)):
        return value
    obj = _OBJECTS.get(value)  # None in another process (mmalign push): no name to show
    name = getattr(obj, "name_or_path", None) or getattr(getattr(obj, "config", None), "_name_or_path", None)
    return str(name) if name else None


def weights_source(value: Optional[str]) -> Optional[str]:
    """Where the *weights* behind a config value can be loaded from: :func:`source_name`, unless a
    plugin found the kept object's weights differ from that path's (:func:`not_its_weights`: a
    model made with ``from_config`` of a downloaded config carries the config's path)."""
    return None if value in _FOREIGN_WEIGHTS else source_name(value)


def not_its_weights(value: str) -> None:
    """Mark a kept model whose weights are not those of the ``name_or_path`` it carries."""
    _FOREIGN_WEIGHTS.add(value)


def its_weights(value: str) -> None:
    """Clear that mark (the same weights now carry a name_or_path that holds them)."""
    _FOREIGN_WEIGHTS.discard(value)


def object_fingerprint(obj: Any) -> str:
    """sha256 over what makes the object compute what it does: every tensor of a module's state
    dict (name, dtype, shape, bytes), each component of a diffusers pipeline, and the files a
    tokenizer, processor or scheduler writes with ``save_pretrained``."""
    import torch

    digest = hashlib.sha256(type(obj).__qualname__.encode())
    if isinstance(obj, torch.nn.Module):
        for name, tensor in obj.state_dict().items():
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            if tensor.device.type != "meta":
                digest.update(tensor.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    elif isinstance(getattr(obj, "components", None), Mapping):  # a diffusers pipeline
        for name, part in sorted(obj.components.items()):
            digest.update(f"{name}:{object_fingerprint(part) if part is not None else 'none'}".encode())
    elif hasattr(obj, "save_pretrained"):
        with tempfile.TemporaryDirectory() as tmp:
            obj.save_pretrained(tmp)
            for file in sorted(Path(tmp).rglob("*")):
                if file.is_file():
                    digest.update(str(file.relative_to(tmp)).encode() + file.read_bytes())
    else:
        digest.update(repr(obj).encode())
    return digest.hexdigest()


def fingerprint(dataset: Any, name: str) -> str:
    """What identifies the content: a ``datasets.Dataset``'s own fingerprint (its source files and
    the transforms applied), else the sha256 of the rows as canonical JSON (bytes by their sha256)."""
    if hasattr(dataset, "_fingerprint") and hasattr(dataset, "with_format"):
        return hashlib.sha256(str(dataset._fingerprint).encode()).hexdigest()
    if isinstance(dataset, (str, bytes, Mapping)) or not hasattr(dataset, "__iter__"):
        raise ConfigError(f"{name}: give a datasets.Dataset or a list of dicts (one per record), not a "
                          f"{type(dataset).__name__}. For a DatasetDict, pick a split: dataset['train'].")
    digest = hashlib.sha256()
    for i, row in enumerate(dataset):
        if not isinstance(row, Mapping):
            raise ConfigError(f"{name}[{i}] is a {type(row).__name__}: every record must be a dict.")
        digest.update(json.dumps(row, sort_keys=True, default=_canonical).encode() + b"\n")
    return digest.hexdigest()


def _canonical(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "bytes:" + hashlib.sha256(value).hexdigest()
    if hasattr(value, "tobytes"):  # a PIL image or an array
        return f"{type(value).__name__}:" + hashlib.sha256(value.tobytes()).hexdigest()
    return repr(value)


#: mmalign.train's model arguments -> the config key each one sets
OBJECT_KEYS = {"model": "model.name_or_path", "ref_model": "reference.name_or_path",
               "tokenizer_or_processor": "model.tokenizer"}


def object_overrides(data: Mapping, objects: Mapping[str, Any]) -> list[str]:
    """``--set`` overrides pointing the config keys at the kept ``objects`` (mmalign.train's
    ``model=``, ``ref_model=``, ``tokenizer_or_processor=``; None: not given). A config that
    already names the same thing (or ``model.tiny`` with ``model=``) is refused: a model comes
    from one place."""
    if objects.get("ref_model") is not None and objects.get("ref_model") is objects.get("model"):
        raise ConfigError("mmalign.train: ref_model= is the model being trained; pass a separate copy, or "
                          "leave ref_model out (the reference is then a frozen copy of the initial model).")
    overrides = []
    for argument, obj in objects.items():
        if obj is None:
            continue
        key = OBJECT_KEYS[argument]
        for taken in (key, "model.tiny") if argument == "model" else (key,):
            section, name = taken.split(".")
            if (data.get(section) or {}).get(name) is not None:
                raise ConfigError(f"{argument}= is given and the config sets {taken}: a model comes from one "
                                  f"place. Remove {taken} from the config, or leave out {argument}=.")
        overrides.append(f"{key}={keep_object(argument, obj)}")
    return overrides
