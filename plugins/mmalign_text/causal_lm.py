"""What the text, reward-model and VLM plugins share about transformers models: one dtype table,
seeing through wrappers, LoRA, loading (from_pretrained, from ``model.tiny``), gradient
checkpointing, regional compile, the tokenizer, the completion-target layout of padded rows, and
:class:`CausalLMModels`, the save / load / resume side of a reward built on these models.

Two ways to see through a model, because callers need two things:

- :func:`unwrap_wrappers`: under the wrappers training puts around a module (DDP, FSDP,
  DataParallel, DeepSpeed: ``.module``; ``torch.compile``: ``._orig_mod``). A PEFT model stays a
  PEFT model (save and resume need its adapters; diffusion's LoraUNet is kept the same way).
- :func:`unwrap`: the transformers model itself, PEFT's shells peeled too (the LoRA layers stay in
  place inside it): what the head swap, the vision tower and ``config`` lookups need.

The diffusion plugin imports :func:`unwrap_wrappers` and :func:`lora_config` from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from mmalign.config import LoraConfig, ModelConfig
from mmalign.errors import ConfigError
from mmalign.in_memory import held, weights_source
from mmalign_text.quantization import quantization
from mmalign_text.weights_source import check_weights_source
from mmalign.precision import DTYPES
from mmalign.protocol import ModalityPlugin

__all__ = ["DTYPES", "LOADING_OPTIONS", "unwrap_wrappers", "unwrap", "lora_config", "attach_lora",
           "loading_options", "from_pretrained", "token_defaults", "from_tiny", "enable_gradient_checkpointing",
           "compile_layers", "pad_rows", "base_state_dict", "tied_names",
           "CausalLMModels"]

# model.options keys that go to from_pretrained / from_config; every other option is the plugin's own
LOADING_OPTIONS = ("attn_implementation",)
SPECIAL_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


def unwrap_wrappers(model: nn.Module) -> nn.Module:
    """The module under DDP / FSDP / DataParallel / DeepSpeed (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, in any nesting; PEFT models are returned as they are."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module"):
            model = model.module
        else:
            return model


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under the wrappers of :func:`unwrap_wrappers` and PEFT's
    ``PeftModel`` / ``LoraModel`` (``get_base_model``); injected LoRA layers stay in it."""
    model = unwrap_wrappers(model)
    while hasattr(model, "get_base_model"):
        model = unwrap_wrappers(model.get_base_model())
    return model


def lora_config(lora: LoraConfig, *, task_type: Optional[str] = None, target_modules=None,
                modules_to_save: Optional[list[str]] = None):
    """peft's LoraConfig from mmalign's ``model.lora``; ``target_modules`` overrides
    ``lora.target_modules`` (a plugin resolving ``all-linear`` itself)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules if target_modules is None else target_modules,
                          modules_to_save=modules_to_save, task_type=task_type)


def attach_lora(model: nn.Module, lora: LoraConfig, task_type: Optional[str], **overrides) -> nn.Module:
    """``get_peft_model`` with :func:`lora_config` (task_type CAUSAL_LM, SEQ_CLS, or None for a
    model PEFT has no task class for, as the VLMs)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora, task_type=task_type, **overrides))


def loading_options(cfg: ModelConfig) -> dict:
    return {k: cfg.options[k] for k in LOADING_OPTIONS if k in cfg.options} | quantization(cfg)


def from_pretrained(auto_class, path: str, cfg: ModelConfig, *, dtype: Optional[str] = None, **kwargs) -> nn.Module:
    """``auto_class.from_pretrained(path)`` in ``dtype`` (default ``model.dtype``), with the
    model's loading options; a ConfigError naming the path when it cannot be loaded."""
    obj = held(path)
    if obj is not None:  # passed to mmalign.train from Python: used as it is
        if not isinstance(obj, nn.Module):
            raise ConfigError(f"mmalign.train: a {type(obj).__name__} was passed as a model; pass a "
                              f"transformers model (one that {auto_class.__name__}.from_pretrained loads).")
        if path == cfg.name_or_path and (cfg.lora is not None or hasattr(obj, "peft_config")):
            check_weights_source(path, obj)  # the policy, saved as an adapter pointing at its path
        return obj
    kwargs = dict(dtype=DTYPES[dtype or cfg.dtype], trust_remote_code=cfg.trust_remote_code,
                  **loading_options(cfg), **kwargs)
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ConfigError(f"model.name_or_path: cannot load '{path}' ({e}). Pass a local "
                          f"directory with config.json and weights, or a hub id.") from None


def token_defaults(config_kwargs: dict, tokenizer, keys: tuple[str, ...] = SPECIAL_TOKEN_KEYS) -> dict:
    """``config_kwargs`` with ``vocab_size`` and the special token ids taken from the tokenizer
    where ``model.tiny`` does not set them (in place; returned for chaining)."""
    config_kwargs.setdefault("vocab_size", len(tokenizer))
    for key in keys:
        config_kwargs.setdefault(key, getattr(tokenizer, key))
    return config_kwargs


def from_tiny(auto_class, cfg: ModelConfig, config_kwargs: dict, *, default_type: str) -> nn.Module:
    """A randomly initialised ``auto_class`` model from ``model.tiny``-style keys: ``model_type``
    (default ``default_type``) and that type's config keyword arguments, in ``model.dtype``."""
    from transformers import AutoConfig

    kwargs = dict(config_kwargs)
    model_type = kwargs.pop("model_type", default_type)
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"model.tiny: {e}. model.tiny holds model_type (default {default_type}) and the "
                          f"keyword arguments of that model type's config class (e.g. LlamaConfig).") from None
    dtype = DTYPES[cfg.dtype]
    return auto_class.from_config(config, dtype=None if dtype == "auto" else dtype, **loading_options(cfg))


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass; the KV cache is off (it cannot be kept while
    layers are recomputed; transformers would switch it off with a warning every forward)."""
    model.gradient_checkpointing_enable()
    model.config.use_cache = False


def compile_layers(model: nn.Module) -> int:
    """Regional ``torch.compile``: every module whose class a transformers (sub)model lists in
    ``_no_split_modules`` (the decoder layers; a VLM's vision encoder layers too) is compiled on
    its own, with dynamic shapes (packed rows change length every step). The head swap of
    :mod:`mmalign_text.logps` stays outside the compiled regions. Returns the number compiled."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def pad_rows(rows: list[tuple[list[int], list[int]]], pad: int):
    """(prompt ids, completion ids) rows -> right-padded input_ids and attention mask [R, T]; the
    row, position and token of every completion target [N] (the logits at position t predict token
    t + 1, so the positions are those just before each completion token); and the layout [R, L]
    of the targets per row with its mask. An empty prompt leaves the completion's first token
    unscored (nothing predicts it)."""
    length = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    width = max(len(c) for _, c in rows)
    layout = torch.zeros((len(rows), width), dtype=torch.long)
    target_mask = torch.zeros((len(rows), width), dtype=torch.long)
    target_rows, positions, targets = [], [], []
    count = 0
    for i, (p, c) in enumerate(rows):
        input_ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attention[i, :len(p) + len(c)] = 1
        skip = 1 if not p else 0
        n = len(c) - skip
        target_rows.append(torch.full((n,), i, dtype=torch.long))
        positions.append(torch.arange(len(p) - 1 + skip, len(p) + len(c) - 1))
        targets.append(torch.tensor(c[skip:], dtype=torch.long))
        layout[i, :n] = torch.arange(count, count + n)
        target_mask[i, :n] = 1
        count += n
    return (input_ids, attention, torch.cat(target_rows), torch.cat(positions), torch.cat(targets), layout,
            target_mask)


def base_state_dict(peft_base: nn.Module) -> dict[str, Tensor]:
    """The base model's weights under their original names: LoRA layers wrap each target as
    ``<name>.base_layer``; drop the adapter tensors and unwrap the names."""
    return {k.replace(".base_layer.", "."): v for k, v in peft_base.state_dict().items()
            if "lora_" not in k}


def name_no_base(adapter_config: Path) -> None:
    """An adapter saved beside its base (``base_model/``) names no base of its own: pointing at
    the model's name_or_path, ``AutoPeftModel`` would load it over other weights."""
    import json

    config = json.loads(adapter_config.read_text())
    config["base_model_name_or_path"] = None
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def tied_names(model: nn.Module) -> set[str]:
    """Parameter names the model ties to another (absent from a saved state dict by design)."""
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys)


class CausalLMModels(ModalityPlugin):
    """The model side of a reward whose models are transformers models (text, reward model, VLM):
    ``load_reference``, ``load_trained``, ``save``, ``load_weights`` and ``to_device``.

    A subclass sets ``cfg`` (ModelConfig) and ``tokenizer``, and defines ``_from_pretrained(path,
    dtype=None)`` (its Auto class through :func:`from_pretrained`, in ``dtype`` or ``model.dtype``)
    and ``_base_model()`` (from ``model.name_or_path``, or random from ``model.tiny``)."""

    cfg: ModelConfig
    #: the transformers classes that load what ``save`` writes (the model card's loading code)
    auto_class: str = "AutoModelForCausalLM"
    processor_class: str = "AutoTokenizer"

    def _from_pretrained(self, path: str, dtype: Optional[str] = None) -> nn.Module:
        raise NotImplementedError

    def _base_model(self) -> nn.Module:
        raise NotImplementedError

    def load_reference(self, name_or_path: str) -> nn.Module:
        return self._from_pretrained(name_or_path)

    def batch_counts(self, batch) -> dict[str, Tensor]:
        """{"tokens": the non-padding tokens of the policy forward}: on the shared-prefix path each
        token of the shared rows once (a prompt shared by its responses counts once), else the
        padding mask's ones (every row the forward reads, a pair's prompt in both)."""
        from mmalign_text.prefix_sharing import shared_tokens

        if getattr(batch, "plain_index", None) is not None:
            return {"tokens": shared_tokens(batch)}
        mask = getattr(batch, "attention_mask", None)
        return {"tokens": mask.sum()} if isinstance(mask, Tensor) and mask.dim() == 2 else {}

    def load_trained(self, directory: str | Path) -> nn.Module:
        """A model written by ``save``: a full model, or base + adapter."""
        directory = Path(directory)
        if (directory / "adapter_config.json").exists():
            from peft import PeftModel

            return PeftModel.from_pretrained(self._adapter_base(directory), directory)
        return self._from_pretrained(str(directory))

    def _adapter_base(self, directory: Path) -> nn.Module:
        """The base under an adapter written by ``save``: ``directory/base_model`` when save wrote
        one, else the base's own path (for a model passed from Python, the path it was loaded from:
        the object itself now carries the trained adapters)."""
        if (directory / "base_model").exists():
            return self._from_pretrained(str(directory / "base_model"))
        if held(self.cfg.name_or_path) is not None:
            return self._from_pretrained(weights_source(self.cfg.name_or_path))
        return self._base_model()

    def save(self, model: nn.Module, directory: Path) -> None:
        """Full model: ``from_pretrained(directory)`` of the plugin's Auto class. LoRA: the adapter,
        which ``PeftModel.from_pretrained(base, directory)`` loads; for a base built from
        ``model.tiny`` (no path to point to) the base weights go to ``directory/base_model``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        if hasattr(model, "peft_config") and weights_source(self.cfg.name_or_path) is None:  # no path to point at
            base = model.get_base_model()
            base.save_pretrained(directory / "base_model", state_dict=base_state_dict(base),
                                 safe_serialization=True)
            name_no_base(directory / "adapter_config.json")

    @classmethod
    def how_to_load(cls, directory: Path, ref: str, base: Optional[str]) -> tuple[str, str]:
        """``auto_class`` on ``ref``; an adapter: peft's PeftModel over the base (see
        :func:`mmalign_text.loading_code.transformers_loading`)."""
        from mmalign_text.loading_code import transformers_loading

        return transformers_loading(cls.auto_class, cls.processor_class, directory, ref, base)

    def load_weights(self, model: nn.Module, directory: Path) -> None:
        """Load weights written by ``save`` into ``model`` in place (exact resume)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if hasattr(model, "peft_config"):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
            return
        # Through from_pretrained, so transformers maps its on-disk key names (which differ from the
        # module's for some architectures, LLaVA among them) exactly as a user's load would; in
        # float32, so fp32 master weights come back bit for bit (bf16 ones too: the casts are exact).
        saved = self._from_pretrained(str(directory), dtype="float32")
        missing, unexpected = model.load_state_dict(saved.state_dict(), strict=False)
        if unexpected or (set(missing) - tied_names(model)):
            raise ConfigError(f"{directory}: weights do not match the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}).")

    def to_device(self, batch, device: torch.device):
        return batch.to(device)
