"""Is a model passed from Python what its ``name_or_path`` holds?

A LoRA run on a model passed to :func:`mmalign.train` saves the adapter alone, pointing at the
model's ``name_or_path`` as its base, as TRL's trainers do. A model made with
``AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p))`` carries ``p`` too, with random
weights: the adapter would then load over other weights than it was trained on. So the plugin
compares up to four weight matrices of the model with the files at ``p`` (a directory, or the Hub
cache, where ``from_pretrained`` left them). When they differ, or ``p`` has no weights on this
machine (it cannot have been loaded from there), the model is marked
(:func:`mmalign.in_memory.not_its_weights`) and ``save`` writes its base to ``final/base_model/``.
Trusted, as before, when it cannot tell: only ``.bin`` weights, a Hub id not in the default cache
at its main revision (loaded with ``revision=`` or ``cache_dir=``), no matrix to compare (a
quantized model). The adapter saved beside a written base names no base (``adapter_config.json``'s
``base_model_name_or_path`` is null), so no loader can put it over ``p``'s weights silently.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from mmalign.in_memory import its_weights, not_its_weights, source_name
from mmalign.validation import warn

SAMPLED = 4  # weight matrices compared: random ones differ from trained ones in every entry
ROWS = 64  # of each (an embedding or lm_head is vocabulary x hidden: a slice suffices)


def check_weights_source(address: str, model: nn.Module) -> None:
    """Mark the kept ``model`` at ``address`` when its weights are not those of its name_or_path
    (and clear a mark an earlier call left when they are)."""
    source = source_name(address)
    if source is None:
        return
    because = not_its_weights_because(model, source)
    if because is None:
        its_weights(address)
        return
    not_its_weights(address)
    why = {"differ": "its weights differ from the files there",
           "absent": "no weights of it are on this machine"}[because]
    warn(f"model: the model passed names '{source}' as its name_or_path, but {why} (a model made with "
         f"from_config, or trained before?). A LoRA adapter will be saved with its base in final/base_model/.")


def not_its_weights_because(model: nn.Module, source: str, subfolder: str = "") -> Optional[str]:
    """"absent" (``source`` has no weights here) or "differ" when ``model`` does not hold the
    weights at ``source`` (in ``subfolder``: a diffusers component); None when it does or that
    cannot be told (:func:`weight_files`, :func:`sampled_weights_match`)."""
    files = weight_files(source, subfolder)
    if files == []:
        return "absent"
    if files and sampled_weights_match(model, files) is False:
        return "differ"
    return None


def weight_files(source: str, subfolder: str = "") -> Optional[list[Path]]:
    """The safetensors files of ``source`` (in ``subfolder``: a diffusers component), a directory
    or a Hub id in the Hub cache (the snapshot folder of its ``config.json``): every shard and
    variant (``.fp16.safetensors``) there. [] when it has no weights here (a path that does not
    exist, a cached config without weights: what ``AutoConfig.from_pretrained`` leaves); None when
    it cannot tell (only ``.bin`` weights; a Hub id not in the default cache at its main revision,
    as ``revision=`` or ``cache_dir=`` loads leave it)."""
    if Path(source).is_dir():
        folder = Path(source) / subfolder
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            config = try_to_load_from_cache(source, f"{subfolder}/config.json" if subfolder else "config.json")
        except ValueError:  # not a Hub id (HFValidationError): a path that does not exist
            return []
        if not isinstance(config, str):
            return None
        folder = Path(config).parent
    files = sorted(folder.glob("*.safetensors"))
    return files or (None if any(folder.glob("*.bin")) else [])


def sampled_weights_match(model: nn.Module, files: list[Path]) -> Optional[bool]:
    """Whether up to SAMPLED weight matrices (spread over the model) equal the tensor of the same
    name in one of the files (a variant's or the full-precision one); False as soon as a shared
    name holds another number of values (resized embeddings); None when none can be compared
    (quantized or offloaded to the meta device, unreadable files)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items()}
    holders: dict[str, list[Path]] = {}  # key -> the files holding it (shards; variants hold it twice)
    for file, key, shape in _file_keys(files):
        mine = state.get(key)
        if mine is None or mine.dim() < 2 or not mine.is_floating_point() or mine.device.type == "meta":
            continue
        if math.prod(shape) != mine.numel():
            return False
        if tuple(shape) == tuple(mine.shape):  # the same count in another layout: a converted key
            holders.setdefault(key, []).append(file)
    keys = sorted(holders)
    if not keys:
        return None
    picked = {keys[i * (len(keys) - 1) // max(1, SAMPLED - 1)] for i in range(min(SAMPLED, len(keys)))}
    return all(any(_equal(file, key, state[key].detach()) for file in holders[key]) for key in sorted(picked))


def _file_keys(files: list[Path]):
    """(file, tensor name, shape) of every tensor of the readable files (an LFS pointer is not)."""
    from safetensors import safe_open

    for file in files:
        try:
            with safe_open(str(file), "pt") as f:
                found = [(key, f.get_slice(key).get_shape()) for key in f.keys()]
        except Exception:  # noqa: BLE001 (safetensors raises its own error type for a file it cannot read)
            continue
        yield from ((file, key, shape) for key, shape in found)


def _equal(file: Path, key: str, mine: torch.Tensor) -> bool:
    """The first ROWS rows of the file's tensor equal ``mine``'s: cast to the model's dtype, as
    from_pretrained casts, or first to bfloat16 / float16 (a low-precision load later upcast)."""
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        saved = f.get_slice(key)[:ROWS]
    mine = mine[:ROWS].cpu()
    return any(torch.equal(saved.to(via).to(mine.dtype), mine) for via in (mine.dtype, torch.bfloat16, torch.float16))
