"""Is a model passed from Python what its ``name_or_path`` holds?

A LoRA run on a model passed to :func:`mmalign.train` saves the adapter alone, pointing at the
model's ``name_or_path`` as its base, as TRL's trainers do. A model made with
``AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p))`` carries ``p`` too, with random
weights: the adapter would then load over other weights than it was trained on. So the plugin
compares up to four weight matrices of the model with the files at ``p`` (a directory, or the Hub
cache, where ``from_pretrained`` left them). When they differ, or ``p`` has no weights on this
machine (it cannot have been loaded from there), the model is marked
(:func:`mmalign.in_memory.not_its_weights`) and ``save`` writes its base to ``final/base_model/``.
Only ``.bin`` weights, or no matrix to compare (a quantized model): trusted, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from mmalign.in_memory import not_its_weights, source_name
from mmalign.validation import warn

SAMPLED = 4  # weight matrices compared: random ones differ from trained ones in every entry


def check_weights_source(address: str, model: nn.Module) -> None:
    """Mark the kept ``model`` at ``address`` when its weights are not those of its name_or_path."""
    source = source_name(address)
    if source is None:
        return
    files = weight_files(source)
    if files is None or (files and sampled_weights_match(model, files) is not False):
        return
    not_its_weights(address)
    why = "its weights differ from the files there" if files else "no weights of it are on this machine"
    warn(f"model: the model passed names '{source}' as its name_or_path, but {why} (a model made with "
         f"from_config?). A LoRA adapter will be saved with its base in final/base_model/.")


def weight_files(source: str, subfolder: str = "") -> Optional[list[Path]]:
    """The safetensors files of ``source`` (in ``subfolder``: a diffusers component), a directory
    or a Hub id in the Hub cache (the snapshot folder of its ``config.json``): every shard and
    variant (``.fp16.safetensors``) there. [] when it has no weights here; None when it has only
    weights that are not read here (``.bin``)."""
    if Path(source).is_dir():
        folder = Path(source) / subfolder
    else:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(source, f"{subfolder}/config.json" if subfolder else "config.json")
        if not isinstance(config, str):  # not in the cache (or known to be absent from the repo)
            return []
        folder = Path(config).parent
    files = sorted(folder.glob("*.safetensors"))
    return files or (None if any(folder.glob("*.bin")) else [])


def sampled_weights_match(model: nn.Module, files: list[Path]) -> Optional[bool]:
    """Whether up to SAMPLED weight matrices (spread over the model) equal the tensor of the same
    name and shape in one of the files (a variant's or the full-precision one); None when none can
    be compared (quantized or offloaded to the meta device)."""
    from safetensors import safe_open

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items()}
    holders: dict[str, list[Path]] = {}  # key -> the files holding it (shards; variants hold it twice)
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                mine = state.get(key)
                if mine is not None and mine.dim() >= 2 and mine.is_floating_point() and \
                        mine.device.type != "meta" and tuple(f.get_slice(key).get_shape()) == tuple(mine.shape):
                    holders.setdefault(key, []).append(file)
    keys = sorted(holders)
    if not keys:
        return None
    picked = {keys[i * (len(keys) - 1) // max(1, SAMPLED - 1)] for i in range(min(SAMPLED, len(keys)))}
    return all(any(_equal(file, key, state[key].detach()) for file in holders[key]) for key in sorted(picked))


def _equal(file: Path, key: str, mine: torch.Tensor) -> bool:
    """The file's tensor, cast to the model's dtype (as from_pretrained casts), equals ``mine``."""
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        return torch.equal(f.get_tensor(key).to(mine.dtype), mine.cpu())
