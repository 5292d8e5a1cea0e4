"""LoRA on a diffusers UNet, with the reference = the same UNet with its adapters disabled.

diffusers attaches adapters with ``unet.add_adapter`` and switches them with ``disable_adapters`` /
``enable_adapters``; mmalign's ``disable_adapters`` reference strategy calls a context manager
``policy.disable_adapter()`` (the PEFT-model spelling). :class:`LoraUNet` is the small wrapper that
provides it, so there is still only one UNet in memory.

Saved adapters use the diffusers LoRA layout (``pytorch_lora_weights.safetensors``, keys prefixed
``unet.``, the LoRA config in the file's metadata): ``pipeline.load_lora_weights(directory)`` loads it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from torch import nn

from mmalign.config import LoraConfig as MmalignLora
from mmalign_text.causal_lm import lora_config

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class LoraUNet(nn.Module):
    """A UNet with LoRA adapters; ``forward`` is the UNet's."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)

    @property
    def config(self):
        return self.unet.config

    @contextmanager
    def disable_adapter(self):
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()


def target_modules(unet: nn.Module, spec: str | list[str]) -> list[str] | str:
    """``all-linear`` (the core's default) -> every ``nn.Linear`` of the UNet by name: PEFT resolves
    that shortcut only for transformers models. Lists pass through (the diffusers Diffusion-DPO
    scripts use ``[to_q, to_k, to_v, to_out.0]``)."""
    if isinstance(spec, str) and spec.lower() == "all-linear":
        return [name for name, m in unet.named_modules() if isinstance(m, nn.Linear)]
    return spec


def add_lora(unet: nn.Module, lora: MmalignLora) -> LoraUNet:
    """The adapter from the shared ``model.lora`` -> peft LoraConfig builder, attached the
    diffusers way (``add_adapter``: the UNet stays a UNet, no PeftModel around it)."""
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(lora, target_modules=target_modules(unet, lora.target_modules)))
    return LoraUNet(unet)


def save_lora(model: LoraUNet, directory: Path, architecture: str) -> None:
    """The adapter in the diffusers layout, as the diffusers DPO scripts write it."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    pipeline_cls = StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline
    unet = model.unet
    metadata = unet.peft_config["default"].to_dict()
    # load_lora_weights leaves the injected LoRA layers in train mode, so a saved dropout would
    # stay active at inference: the adapter is saved for inference, without dropout.
    metadata["lora_dropout"] = 0.0
    # sets (target_modules) in a fixed order: diffusers writes list(set), whose order follows the
    # process's string hash seed, so identical runs would write different bytes
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in metadata.items()}
    pipeline_cls.save_lora_weights(str(directory), unet_lora_layers=get_peft_model_state_dict(unet),
                                   unet_lora_adapter_metadata=metadata, weight_name=WEIGHT_NAME)


def load_lora_weights_into(model: LoraUNet, directory: Path) -> None:
    """Exact resume: put saved adapter weights back into an adapter of the same shape."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(directory) / WEIGHT_NAME))
    state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(model.unet, state, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        from mmalign.errors import ConfigError

        raise ConfigError(f"{directory}: the saved LoRA does not match the model's adapter "
                          f"(unexpected {unexpected[:3]}). Use the same model.lora settings.")


def load_lora_unet(base_unet: nn.Module, directory: Path) -> LoraUNet:
    """A base UNet plus the adapter saved in ``directory`` (rank and alpha from its metadata)."""
    base_unet.load_lora_adapter(str(directory), prefix="unet", adapter_name="default",
                                weight_name=WEIGHT_NAME)
    return LoraUNet(base_unet)


def loading_code(directory: Path, ref: str, base: str | None) -> str:
    """diffusers code that loads what ``save`` wrote into ``directory`` (the model card): the
    pipeline at ``ref``, or for an adapter the base pipeline (``base``, else the ``base_pipeline/``
    that ``save`` writes beside an adapter on a ``model.tiny`` base) and ``load_lora_weights``."""
    import json

    imports = "from diffusers import DiffusionPipeline\n"
    if not (Path(directory) / WEIGHT_NAME).is_file():
        return f"{imports}\npipeline = DiffusionPipeline.from_pretrained({json.dumps(ref)})\n"
    if base:
        return (f"{imports}\npipeline = DiffusionPipeline.from_pretrained({json.dumps(base)})\n"
                f"pipeline.load_lora_weights({json.dumps(ref)})\n")
    return (f"import os\n\n{imports}from huggingface_hub import snapshot_download\n\n"
            f"repo = {json.dumps(ref)}\nfolder = repo if os.path.isdir(repo) else snapshot_download(repo)\n"
            f"pipeline = DiffusionPipeline.from_pretrained(os.path.join(folder, \"base_pipeline\"))\n"
            f"pipeline.load_lora_weights(folder)\n")
