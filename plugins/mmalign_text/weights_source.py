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

import json
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


def weight_files(source: str, subfolder: str = "", stem: str = "model") -> Optional[list[Path]]:
    """The safetensors files of ``source`` (in ``subfolder``: a diffusers component), a directory
    or a Hub id in the Hub cache; [] when it has no weights here; None when it has only weights
    that are not read here (``.bin``). ``stem``: the weight files' name (diffusers:
    ``diffusion_pytorch_model``)."""
    folder = Path(source) / subfolder
    if Path(source).is_dir():
        files = sorted(folder.glob("*.safetensors"))
        return files or (None if any(folder.glob("*.bin")) else [])
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> Optional[Path]:
        found = try_to_load_from_cache(source, f"{subfolder}/{name}" if subfolder else name)
        return Path(found) if isinstance(found, str) else None

    index = cached(f"{stem}.safetensors.index.json")
    if index is not None:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [f for f in (cached(n) for n in names) if f is not None]
    single = cached(f"{stem}.safetensors")
    if single is not None:
        return [single]
    bin_stem = "pytorch_model" if stem == "model" else stem
    return None if cached(f"{bin_stem}.bin") or cached(f"{bin_stem}.bin.index.json") else []


def sampled_weights_match(model: nn.Module, files: list[Path]) -> Optional[bool]:
    """Whether up to SAMPLED weight matrices (spread over the model) equal the files' tensors of the
    same name and shape, cast to the model's dtype as ``from_pretrained`` casts; None when none
    can be compared (quantized or offloaded to the meta device)."""
    from safetensors import safe_open

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items()}
    shapes = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                mine = state.get(key)
                if mine is not None and mine.dim() >= 2 and mine.is_floating_point() and \
                        mine.device.type != "meta" and tuple(f.get_slice(key).get_shape()) == tuple(mine.shape):
                    shapes[key] = file
    keys = sorted(shapes)
    if not keys:
        return None
    picked = {keys[i * (len(keys) - 1) // max(1, SAMPLED - 1)] for i in range(min(SAMPLED, len(keys)))}
    for key in sorted(picked):
        with safe_open(str(shapes[key]), "pt") as f:
            saved = f.get_tensor(key)
        mine = state[key].detach()
        if not torch.equal(saved.to(mine.dtype), mine.cpu()):
            return False
    return True
