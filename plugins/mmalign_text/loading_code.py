"""The model card's "How to load" for transformers models (text, reward model, VLM): Python that
loads what :meth:`mmalign_text.causal_lm.CausalLMModels.save` wrote, with plain transformers
(a full model) or peft (an adapter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def transformers_loading(auto_class: str, processor_class: str, directory: Path, ref: str,
                         base: Optional[str]) -> tuple[str, str]:
    """(library name, code): ``auto_class.from_pretrained(ref)`` for a full model; for an adapter
    (``adapter_config.json``), ``PeftModel.from_pretrained`` over the base ``base``, or over the
    ``base_model/`` that ``save`` writes beside an adapter on a ``model.tiny`` base."""
    name = "processor" if processor_class == "AutoProcessor" else "tokenizer"
    imports = f"from transformers import {auto_class}, {processor_class}\n"
    if not (Path(directory) / "adapter_config.json").is_file():
        return "transformers", (f"{imports}\nmodel = {auto_class}.from_pretrained({json.dumps(ref)})\n"
                                f"{name} = {processor_class}.from_pretrained({json.dumps(ref)})\n")
    if base:
        return "peft", (f"from peft import PeftModel\n{imports}\n"
                        f"base = {auto_class}.from_pretrained({json.dumps(base)})\n"
                        f"model = PeftModel.from_pretrained(base, {json.dumps(ref)})\n"
                        f"{name} = {processor_class}.from_pretrained({json.dumps(ref)})\n")
    # a path to base_model/, not subfolder="base_model": transformers would see the adapter in the
    # folder above and load the adapter's base instead
    return "peft", (f"import os\n\nfrom huggingface_hub import snapshot_download\nfrom peft import PeftModel\n"
                    f"{imports}\nrepo = {json.dumps(ref)}\n"
                    f"folder = repo if os.path.isdir(repo) else snapshot_download(repo)\n"
                    f"base = {auto_class}.from_pretrained(os.path.join(folder, \"base_model\"))\n"
                    f"model = PeftModel.from_pretrained(base, folder)\n"
                    f"{name} = {processor_class}.from_pretrained(folder)\n")
