"""The text modality: any AutoModelForCausalLM; score = sum of response-token log-probs.

    s(x, y) = sum_t log p_theta(y_t | x, y_<t)      (prompt tokens masked out)

By default each pair is one segment [prompt | chosen | rejected] (prefix sharing) and segments of
different lengths share rows (packing), see :mod:`.prefix_sharing`; with
``model.options.prefix_sharing: false`` chosen and rejected are 2B rows of one forward pass. Sampled
groups (online algorithms) share each prompt among its k responses the same way (:mod:`.group_sharing`)
and are sampled by a lean decode loop (:mod:`.decoding`; ``model.options.generation: hf`` for HF
``generate``). Either way log-probs are computed only at the positions that predict a completion
token, in chunks (:mod:`.logps`), never as full-vocabulary logits for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mmalign.config import DataConfig, ModelConfig
from mmalign.data import Record
from mmalign.errors import ConfigError
from mmalign_text.causal_lm import (CausalLMModels, attach_lora, compile_layers, enable_gradient_checkpointing,
                                    from_pretrained, from_tiny, pad_rows, token_defaults)
from mmalign_text.quantization import check_quantization
from mmalign_text.sources import load_tokenizer
from mmalign_text.lengths import Limits, model_positions
from mmalign.protocol import Samples
from mmalign.scores import Scores
from mmalign_text.logps import target_logps, unit_scores
from mmalign_text.group_sharing import SharedGroupBatch, collate_groups, model_cost_ratio, responses_per_segment
from mmalign_text.prefix_sharing import SharedPrefixBatch, collate_shared, shared_target_logps, shared_token_logps
from mmalign_text.records import TextExample, tokenize_record
from mmalign_text.sampling import GENERATION, TextGroup, group_rows, sample_contexts

# attn_implementation goes to from_pretrained (causal_lm.LOADING_OPTIONS); the others are the
# plugin's own (scoring path, LD-DPO, WPO, the sampler).
KNOWN_OPTIONS = {"attn_implementation", "prefix_sharing", "packing", "fused_logps", "compile", "ld_alpha", "wpo",
                 "generation", "quantization"}


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
    group: int = 0  # sampled groups: k responses per context, rows c * k + j (pairs = C contexts)

    def to(self, device: torch.device) -> "TextBatch":
        return TextBatch(*[t.to(device) for t in (self.input_ids, self.attention_mask, self.target_rows,
                                                  self.target_positions, self.targets, self.layout,
                                                  self.target_mask)],
                         self.pairs, self.paired, None if self.labels is None else self.labels.to(device),
                         self.group)


class TextReward(CausalLMModels):
    name = "text"
    deterministic_collate = True  # batches draw no randomness: reference scores can be cached
    provides_extras = ("mismatched", "desirable")  # KTO, for unpaired records with a label
    per_unit_scores = True  # score(..., per_unit=True): per-token log-probs
    from mmalign_text.data_options import TextDataOptions as data_options  # its data.* keys

    @staticmethod
    def check_config(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
        """The plugin's keys, checked before anything loads (mmalign.validation calls it too)."""
        from mmalign_text.tiny_config import check_transformers_config

        unknown = set(model_cfg.options) - KNOWN_OPTIONS
        if unknown:
            raise ConfigError(f"model.options: unknown option '{sorted(unknown)[0]}' for the text "
                              f"plugin. Known: {', '.join(sorted(KNOWN_OPTIONS))}.")
        for name in ("prefix_sharing", "packing", "fused_logps", "compile", "wpo"):
            if not isinstance(model_cfg.options.get(name, False), bool):
                raise ConfigError(f"model.options.{name} must be true or false, got "
                                  f"{model_cfg.options[name]!r}.")
        if model_cfg.options.get("generation", "fast") not in GENERATION:
            raise ConfigError(f"model.options.generation must be one of {', '.join(GENERATION)} (fast: each "
                              f"prompt prefilled once, a lean decode loop; hf: transformers' generate), got "
                              f"{model_cfg.options['generation']!r}.")
        alpha = model_cfg.options.get("ld_alpha", 1.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"model.options.ld_alpha must be a number in [0, 1], got {alpha!r}.")
        if model_cfg.name_or_path is None and model_cfg.tiny is not None:
            check_transformers_config(model_cfg.tiny, "llama")
        check_quantization(model_cfg)

    def __init__(self, model_cfg: ModelConfig, data_cfg: DataConfig):
        self.check_config(model_cfg, data_cfg)
        self.cfg = model_cfg
        self.data = data_cfg
        self.tokenizer = load_tokenizer(model_cfg)
        self.limits = Limits.of(data_cfg, self.tokenizer, model_positions(model_cfg))
        self._cost_ratio = "unknown"  # sampled groups' segment cost (group_sharing), read when first needed

    # --- models (load_reference, load_trained, save, load_weights: CausalLMModels) -------------
    def _from_pretrained(self, path: str, dtype: Optional[str] = None) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return from_pretrained(AutoModelForCausalLM, path, self.cfg, dtype=dtype)

    def _base_model(self) -> nn.Module:
        if self.cfg.name_or_path is not None:
            return self._from_pretrained(self.cfg.name_or_path)
        from transformers import AutoModelForCausalLM

        return from_tiny(AutoModelForCausalLM, self.cfg, token_defaults(dict(self.cfg.tiny), self.tokenizer),
                         default_type="llama")

    def load_policy(self) -> nn.Module:
        model = self._base_model()
        if self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if self.cfg.lora is not None:
            model = attach_lora(model, self.cfg.lora, "CAUSAL_LM")
        if self.cfg.options.get("compile", False):
            compile_layers(model)
        return model

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, record: Record, *, paired: bool) -> TextExample:
        return tokenize_record(self.tokenizer, record, paired=paired, limits=self.limits)

    def collate(self, examples: list[TextExample], generator: Optional[torch.Generator] = None):
        if isinstance(examples[0], TextGroup):  # sampled responses: k per context
            return self._collate_groups(examples)
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

    def _collate_groups(self, groups: list[TextGroup]):
        """Segments [prompt | r_1 | ... | r_s] sharing the prompt (:mod:`.group_sharing`; s by its
        cost estimate), or k plain rows per context (s = 1, or ``prefix_sharing: false``)."""
        pad, k = self.tokenizer.pad_token_id, len(groups[0].completions)
        if self.cfg.options.get("prefix_sharing", True) and k > 1:
            if self._cost_ratio == "unknown":
                self._cost_ratio = model_cost_ratio(self.cfg)
            s = responses_per_segment([len(g.prompt_ids) for g in groups],
                                      [[len(c) for c in g.completions] for g in groups], self._cost_ratio)
            if s > 1:
                return collate_groups(groups, pad, pack=self.cfg.options.get("packing", True), per_segment=s)
        return TextBatch(*pad_rows(group_rows(groups), pad), len(groups), False, group=k)

    # --- scores and samples -----------------------------------------------------------------------
    def score(self, model: nn.Module, batch, *, per_unit: bool = False) -> Scores:
        """Summed completion log-probs [C, k] (pairs: k = 2; SFT, KTO: k = 1; sampled groups: k = n),
        with ``per_unit`` also the per-token log-probs [C, k, U] (LD-DPO's weights applied)."""
        if isinstance(batch, SharedPrefixBatch):
            return self._score_shared(model, batch, per_unit)
        alpha = float(self.cfg.options.get("ld_alpha", 1.0))
        wpo = bool(self.cfg.options.get("wpo", False)) and batch.paired
        fused = bool(self.cfg.options.get("fused_logps", True))
        if isinstance(batch, SharedGroupBatch):  # sampled groups sharing their prompts
            flat, sum_sq = shared_target_logps(model, batch, fused=fused)
        else:
            inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            flat, sum_sq = target_logps(model, inputs, batch.target_rows, batch.target_positions, batch.targets,
                                        with_sum_sq=wpo, fused=fused)
        mask, b = batch.target_mask, batch.pairs
        token_logps = flat[batch.layout] * mask
        weights = None
        if wpo:
            w = wpo_weight(token_logps, sum_sq[batch.layout] * mask, mask)
            weights = w[:b] * w[b:]
        if alpha != 1.0 and batch.paired:
            token_logps = token_logps * ld_weights(mask, batch.pairs, alpha)
        k = batch.group or (2 if batch.paired else 1)
        # row of response j of context c: c * k + j for groups, j * B + c for pairs (and KTO's first B)
        responses = [(token_logps[j::k], mask[j::k]) if batch.group else
                     (token_logps[j * b:(j + 1) * b], mask[j * b:(j + 1) * b]) for j in range(k)]
        sums = torch.stack([v.sum(-1) for v, _ in responses], 1)
        units = torch.stack([m.sum(-1) for _, m in responses], 1)
        extras = {"mismatched": token_logps[b:].sum(-1), "desirable": batch.labels} if batch.labels is not None else {}
        per_unit_fields = dict(zip(("unit_scores", "unit_mask"), unit_scores(responses))) if per_unit else {}
        return Scores(sums, units, extras=extras, weights=weights, **per_unit_fields)

    def _score_shared(self, model: nn.Module, batch: SharedPrefixBatch, per_unit: bool) -> Scores:
        """Pairs on the shared-prefix (and packed) path: token log-probs in the pair layout [B, L]."""
        alpha = float(self.cfg.options.get("ld_alpha", 1.0))
        wpo = bool(self.cfg.options.get("wpo", False))
        fused = bool(self.cfg.options.get("fused_logps", True))
        token_logps, sum_sq = shared_token_logps(model, batch, with_sum_sq=True, fused=fused) if wpo else \
            (shared_token_logps(model, batch, fused=fused), None)
        c_mask, r_mask = batch.chosen_mask, batch.rejected_mask
        weights = wpo_weight(token_logps, sum_sq, c_mask) * wpo_weight(token_logps, sum_sq, r_mask) if wpo else None
        if alpha != 1.0:
            position = torch.arange(c_mask.shape[1], device=c_mask.device)[None]
            public = torch.minimum(c_mask.sum(-1), r_mask.sum(-1))[:, None]
            c_len = c_mask.sum(-1, keepdim=True)
            in_public = torch.where(c_mask.bool(), position < public, position - c_len < public)
            token_logps = token_logps * torch.where(in_public, 1.0, alpha)
        responses = [(token_logps * c_mask, c_mask), (token_logps * r_mask, r_mask)]
        per_unit_fields = dict(zip(("unit_scores", "unit_mask"), unit_scores(responses))) if per_unit else {}
        return Scores.pairs((token_logps * c_mask).sum(-1), (token_logps * r_mask).sum(-1), c_mask.sum(-1),
                            r_mask.sum(-1), weights=weights, **per_unit_fields)

    def sample(self, model: nn.Module, contexts: list[Any], n: int, generator: torch.Generator, *,
               max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
               batch_size: int = 256) -> Samples:
        """``n`` completions per context ({"prompt": str or chat messages}, as records give it),
        the prompt tokenized as training tokenizes it; ``temperature=0``: greedy decoding; decoded
        as ``model.options.generation`` says. See :func:`mmalign_text.sampling.sample_contexts`."""
        return sample_contexts(model, self.tokenizer, self.limits, contexts, n, generator,
                               max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               batch_size=batch_size, generation=self.cfg.options.get("generation", "fast"))


    def load_value_model(self, policy: nn.Module, name_or_path: Optional[str]) -> nn.Module:
        """PPO's critic: see :mod:`mmalign_text.values`."""
        from mmalign_text.values import load_value_model

        return load_value_model(self.cfg, policy, name_or_path)

    def unit_values(self, model: nn.Module, batch) -> Tensor:
        from mmalign_text.values import unit_values

        if isinstance(batch, SharedGroupBatch):  # the critic reads the plain rows gathered from it
            batch = TextBatch(*batch.plain_rows(), batch.pairs, False, group=batch.group)
        return unit_values(model, batch)


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
