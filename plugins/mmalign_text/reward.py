"""The text modality: any AutoModelForCausalLM; score = sum of response-token log-probs.

    s(x, y) = sum_t log p_theta(y_t | x, y_<t)      (prompt tokens masked out)

By default each pair is one segment [prompt | chosen | rejected] (prefix sharing) and segments of
different lengths share rows (packing), see :mod:`.prefix_sharing`; with
``model.options.prefix_sharing: false`` chosen and rejected are 2B rows of one forward pass. Either
way log-probs are computed only at the positions that predict a completion token, in chunks
(:mod:`.logps`), never as full-vocabulary logits for the whole batch.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from mmalign.config import DataConfig, ModelConfig
from mmalign.data import Record
from mmalign.errors import ConfigError
from mmalign.reward import PairScores
from mmalign_text.lengths import Limits, model_positions
from mmalign_text.logps import compile_layers, target_logps
from mmalign_text.prefix_sharing import SharedPrefixBatch, collate_shared, shared_token_logps
from mmalign_text.records import TextExample, tokenize_record

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
# attn_implementation goes to from_pretrained; the others are the plugin's own (scoring path, LD-DPO, WPO).
KNOWN_OPTIONS = {"attn_implementation", "prefix_sharing", "packing", "fused_logps", "compile", "ld_alpha", "wpo"}
PLUGIN_OPTIONS = {"prefix_sharing", "packing", "fused_logps", "compile", "ld_alpha", "wpo"}


@dataclass
class TextBatch:
    input_ids: Tensor  # [R, T] rows: B chosen then B rejected (R = 2B), right-padded
    attention_mask: Tensor  # [R, T]
    target_rows: Tensor  # [N] row of each position that predicts a completion token
    target_positions: Tensor  # [N] that position
    targets: Tensor  # [N] the completion token it predicts
    layout: Tensor  # [R, L] index into the N targets: row r's completion tokens (padded)
    target_mask: Tensor  # [R, L] 1 where layout points at a completion token
    pairs: int  # B
    paired: bool
    labels: Optional[Tensor] = None  # KTO: [B] 1.0 desirable / 0.0 undesirable; rows B.. 2B are mismatched

    def to(self, device: torch.device) -> "TextBatch":
        return TextBatch(*[t.to(device) for t in (self.input_ids, self.attention_mask, self.target_rows,
                                                  self.target_positions, self.targets, self.layout,
                                                  self.target_mask)],
                         self.pairs, self.paired, None if self.labels is None else self.labels.to(device))


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    path = cfg.tokenizer or cfg.name_or_path
    if path is None:
        raise ConfigError("model.tokenizer is required for a model built from model.tiny: a "
                          "directory written by tokenizer.save_pretrained (or a hub id).")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.tokenizer: cannot load a tokenizer from '{path}' ({e}). Pass a "
                          f"directory with tokenizer files, or a hub id available offline.") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ConfigError(f"model.tokenizer: the tokenizer at '{path}' has no EOS token; set one.")
    return tok


class TextReward:
    name = "text"
    deterministic_collate = True  # batches draw no randomness: reference scores can be cached

    @staticmethod
    def check_config(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
        """The plugin's keys, checked before anything loads (mmalign.validation calls it too)."""
        from mmalign.validation import check_transformers_config

        unknown = set(model_cfg.options) - KNOWN_OPTIONS
        if unknown:
            raise ConfigError(f"model.options: unknown option '{sorted(unknown)[0]}' for the text "
                              f"plugin. Known: {', '.join(sorted(KNOWN_OPTIONS))}.")
        for name in ("prefix_sharing", "packing", "fused_logps", "compile", "wpo"):
            if not isinstance(model_cfg.options.get(name, False), bool):
                raise ConfigError(f"model.options.{name} must be true or false, got "
                                  f"{model_cfg.options[name]!r}.")
        alpha = model_cfg.options.get("ld_alpha", 1.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"model.options.ld_alpha must be a number in [0, 1], got {alpha!r}.")
        if model_cfg.name_or_path is None and model_cfg.tiny is not None:
            check_transformers_config(model_cfg.tiny, "llama")

    def __init__(self, model_cfg: ModelConfig, data_cfg: DataConfig):
        self.check_config(model_cfg, data_cfg)
        self.cfg = model_cfg
        self.data = data_cfg
        self.tokenizer = load_tokenizer(model_cfg)
        self.limits = Limits.of(data_cfg, self.tokenizer, model_positions(model_cfg))

    def _model_options(self) -> dict:
        return {k: v for k, v in self.cfg.options.items() if k not in PLUGIN_OPTIONS}

    # --- models -------------------------------------------------------------------------------
    def _from_pretrained(self, path: str) -> nn.Module:
        from transformers import AutoModelForCausalLM

        kwargs = dict(dtype=DTYPES[self.cfg.dtype], trust_remote_code=self.cfg.trust_remote_code)
        kwargs.update(self._model_options())
        try:
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as e:
            raise ConfigError(f"model.name_or_path: cannot load '{path}' ({e}). Pass a local "
                              f"directory with config.json and weights, or a hub id.") from None

    def _base_model(self) -> nn.Module:
        if self.cfg.name_or_path is not None:
            return self._from_pretrained(self.cfg.name_or_path)
        from transformers import AutoConfig, AutoModelForCausalLM

        tiny = dict(self.cfg.tiny)
        model_type = tiny.pop("model_type", "llama")
        tok = self.tokenizer
        tiny.setdefault("vocab_size", len(tok))
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            tiny.setdefault(key, getattr(tok, key))
        try:
            config = AutoConfig.for_model(model_type, **tiny)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model.tiny: {e}. model.tiny holds the keyword arguments of the "
                              f"model's config class (e.g. LlamaConfig).") from None
        dtype = DTYPES[self.cfg.dtype]
        return AutoModelForCausalLM.from_config(config, dtype=None if dtype == "auto" else dtype,
                                                **self._model_options())

    def load_policy(self) -> nn.Module:
        model = self._base_model()
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if self.cfg.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = self.cfg.lora
            model = get_peft_model(model, LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        if self.cfg.options.get("compile", False):
            compile_layers(model)
        return model

    def load_reference(self, name_or_path: str) -> nn.Module:
        return self._from_pretrained(name_or_path)

    def load_trained(self, directory: str | Path) -> nn.Module:
        """A model written by ``save``: a full model, or base + adapter."""
        directory = Path(directory)
        if (directory / "adapter_config.json").exists():
            from peft import PeftModel

            base_dir = directory / "base_model"
            base = self._from_pretrained(str(base_dir)) if base_dir.exists() else self._base_model()
            return PeftModel.from_pretrained(base, directory)
        return self._from_pretrained(str(directory))

    def save(self, model: nn.Module, directory: Path) -> None:
        """Full model: ``AutoModelForCausalLM.from_pretrained(directory)``. LoRA: the adapter, which
        ``PeftModel.from_pretrained(base, directory)`` loads; for a base built from ``model.tiny``
        (no path to point to) the base weights go to ``directory/base_model``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        if hasattr(model, "peft_config") and self.cfg.name_or_path is None:
            base = model.get_base_model()
            base.save_pretrained(directory / "base_model", state_dict=base_state_dict(base),
                                 safe_serialization=True)

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
        saved = copy.copy(self)
        saved.cfg = dataclasses.replace(self.cfg, dtype="float32")
        saved = saved._from_pretrained(str(directory))
        missing, unexpected = model.load_state_dict(saved.state_dict(), strict=False)
        if unexpected or (set(missing) - _tied_names(model)):
            raise ConfigError(f"{directory}: weights do not match the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}).")

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, record: Record, *, paired: bool) -> TextExample:
        return tokenize_record(self.tokenizer, record, paired=paired, limits=self.limits)

    def collate(self, examples: list[TextExample], generator: Optional[torch.Generator] = None):
        paired = examples[0].rejected_ids is not None
        # keep_end truncation can leave a pair's two rows different prompts: no shared prefix then
        if paired and self.cfg.options.get("prefix_sharing", True) and \
                all(e.rejected_prompt_ids is None for e in examples):
            return collate_shared(examples, self.tokenizer.pad_token_id, pack=self.cfg.options.get("packing", True))
        rows = [(e.prompt_ids, e.chosen_ids) for e in examples]
        if paired:
            rows += [(e.rejected_prompt, e.rejected_ids) for e in examples]
        kto = not paired and examples[0].label is not None
        if kto:  # KTO's reference point: each prompt with the next record's completion (mismatched)
            if len(examples) < 2:
                raise ConfigError("KTO needs at least 2 records per batch (mismatched pairs estimate its "
                                  "reference point): raise train.batch_size.")
            rows += [(e.prompt_ids, examples[(i + 1) % len(examples)].chosen_ids) for i, e in enumerate(examples)]
        labels = torch.tensor([float(e.label) for e in examples]) if kto else None
        return TextBatch(*pad_rows(rows, self.tokenizer.pad_token_id), len(examples), paired, labels)

    def to_device(self, batch: TextBatch, device: torch.device) -> TextBatch:
        return batch.to(device)

    # --- scores -------------------------------------------------------------------------------
    def score(self, model: nn.Module, batch) -> PairScores:
        alpha = float(self.cfg.options.get("ld_alpha", 1.0))
        wpo = bool(self.cfg.options.get("wpo", False))
        fused = bool(self.cfg.options.get("fused_logps", True))
        if isinstance(batch, SharedPrefixBatch):
            token_logps, sum_sq = shared_token_logps(model, batch, with_sum_sq=True, fused=fused) if wpo else \
                (shared_token_logps(model, batch, fused=fused), None)
            c_mask, r_mask = batch.chosen_mask, batch.rejected_mask
            extras = {"pair_weight": wpo_weight(token_logps, sum_sq, c_mask) * wpo_weight(token_logps, sum_sq, r_mask)} \
                if wpo else {}
            if alpha != 1.0:
                position = torch.arange(c_mask.shape[1], device=c_mask.device)[None]
                public = torch.minimum(c_mask.sum(-1), r_mask.sum(-1))[:, None]
                c_len = c_mask.sum(-1, keepdim=True)
                in_public = torch.where(c_mask.bool(), position < public, position - c_len < public)
                token_logps = token_logps * torch.where(in_public, 1.0, alpha)
            return PairScores((token_logps * c_mask).sum(-1), (token_logps * r_mask).sum(-1),
                              c_mask.sum(-1), r_mask.sum(-1), extras=extras)
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        flat, sum_sq = target_logps(model, inputs, batch.target_rows, batch.target_positions, batch.targets,
                                    with_sum_sq=wpo and batch.paired, fused=fused)
        token_logps = flat[batch.layout] * batch.target_mask
        extras = {}
        if wpo and batch.paired:
            w = wpo_weight(token_logps, sum_sq[batch.layout] * batch.target_mask, batch.target_mask)
            extras = {"pair_weight": w[:batch.pairs] * w[batch.pairs:]}
        if alpha != 1.0 and batch.paired:
            token_logps = token_logps * ld_weights(batch.target_mask, batch.pairs, alpha)
        seq = token_logps.sum(-1)
        lengths = batch.target_mask.sum(-1)
        b = batch.pairs
        if batch.labels is not None:
            return PairScores(seq[:b], None, lengths[:b], None,
                              extras={"mismatched": seq[b:], "desirable": batch.labels})
        if not batch.paired:
            return PairScores(seq, None, lengths, None)
        return PairScores(seq[:b], seq[b:], lengths[:b], lengths[b:], extras=extras)


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


def wpo_weight(token_logps: Tensor, log_sum_sq: Tensor, mask: Tensor) -> Tensor:
    """WPO (Zhou et al. 2024, "Weighted Preference Optimization"), the sampled-alignment weight of a
    response under the current policy, detached:

        w(x, y) = exp( 1/|y| * sum_t [ log p(y_t | x, y_<t) - log sum_v p(v | x, y_<t)^2 ] )

    A pair's loss is multiplied by w(x, y_w) * w(x, y_l), so pairs the policy would itself sample
    (on-policy-like) count more. Inputs [R, L] with mask [R, L]; returns [R]."""
    mean = ((token_logps - log_sum_sq) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return mean.exp().detach()


def ld_weights(target_mask: Tensor, pairs: int, alpha: float) -> Tensor:
    """LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization"): the
    tokens of a response beyond the pair's public length l_p = min(|y_w|, |y_l|) count with weight
    alpha, so a longer response cannot win on length alone:

        s_LD(x, y) = sum_{t <= l_p} log p(y_t | ...) + alpha * sum_{t > l_p} log p(y_t | ...)

    target_mask: [2B, K] (B chosen rows, then B rejected); returns weights [2B, K]."""
    index = target_mask.cumsum(-1) - 1  # position of each target token within its response
    lengths = target_mask.sum(-1)
    public = torch.minimum(lengths[:pairs], lengths[pairs:]).repeat(2)[:, None]
    return torch.where(index < public, 1.0, alpha)


def base_state_dict(peft_base: nn.Module) -> dict[str, Tensor]:
    """The base model's weights under their original names: LoRA layers wrap each target as
    ``<name>.base_layer``; drop the adapter tensors and unwrap the names."""
    return {k.replace(".base_layer.", "."): v for k, v in peft_base.state_dict().items()
            if "lora_" not in k}


def _tied_names(model: nn.Module) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys) if not isinstance(keys, dict) else set(keys)
