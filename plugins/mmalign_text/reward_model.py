"""Explicit reward models through the same engine: a Bradley-Terry reward model
(``AutoModelForSequenceClassification`` with ``num_labels=1``) for text.

The "score" of a response is the reward model's scalar output r(x, y), and the loss is the
Bradley-Terry negative log-likelihood (Ouyang et al. 2022, eq. 1; Stiennon et al. 2020):

    L = -log sigmoid(r(x, y_w) - r(x, y_l))

so the engine's usual metrics apply as they are: with ``loss.beta: 1``, rewards/chosen and
rewards/rejected are the mean rewards, rewards/accuracies the pairwise reward accuracy and
rewards/margins the mean margin. ``save`` writes a model that plain
``AutoModelForSequenceClassification.from_pretrained`` loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmalign.losses import LossSpec
from mmalign.errors import ConfigError
from mmalign.protocol import ModalityPlugin
from mmalign.scores import Scores
from mmalign_text.causal_lm import attach_lora, from_pretrained, from_tiny, token_defaults
from mmalign_text.reward import TextReward


@dataclass
class RewardBatch:
    input_ids: Tensor  # [R, T] rows: B chosen then B rejected, right-padded
    attention_mask: Tensor  # [R, T]
    pairs: int
    paired: bool

    def to(self, device: torch.device) -> "RewardBatch":
        return RewardBatch(self.input_ids.to(device), self.attention_mask.to(device), self.pairs, self.paired)


class RewardModel(TextReward):
    score_kind = "reward"  # r(x, y) from a scalar head, not a log-probability
    """Reward ``reward_model``: trains a scalar reward head on preference pairs."""

    name = "reward_model"
    per_unit_scores = False  # one reward per response, no per-token scores
    sample = ModalityPlugin.sample  # a sequence classifier generates nothing
    auto_class = "AutoModelForSequenceClassification"  # what loads final/ (the model card)

    def _from_pretrained(self, path: str, dtype: Optional[str] = None) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        model = from_pretrained(AutoModelForSequenceClassification, path, self.cfg, dtype=dtype, num_labels=1)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def _base_model(self) -> nn.Module:
        if self.cfg.name_or_path is not None:
            return self._from_pretrained(self.cfg.name_or_path)
        from transformers import AutoModelForSequenceClassification

        tiny = token_defaults(dict(self.cfg.tiny), self.tokenizer, keys=("pad_token_id",))
        return from_tiny(AutoModelForSequenceClassification, self.cfg, {**tiny, "num_labels": 1},
                         default_type="llama")

    def load_policy(self) -> nn.Module:
        model = self._base_model()
        if self.cfg.lora is not None:
            model = attach_lora(model, self.cfg.lora, "SEQ_CLS")
        return model

    def collate(self, examples, generator: Optional[torch.Generator] = None) -> RewardBatch:
        paired = examples[0].rejected_ids is not None
        rows = [e.prompt_ids + e.chosen_ids for e in examples]
        if paired:
            rows += [e.rejected_prompt + e.rejected_ids for e in examples]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return RewardBatch(ids, mask, len(examples), paired)

    def score(self, model: nn.Module, batch: RewardBatch, *, per_unit: bool = False) -> Scores:
        if per_unit:
            raise ConfigError("the reward_model plugin scores a response with one reward, not per token: "
                              "use a loss that needs no per-unit scores (e.g. bradley_terry).")
        rewards = reward_of_last_token(model, batch.input_ids, batch.attention_mask)
        b, ones = batch.pairs, torch.ones(batch.pairs, device=rewards.device)
        if not batch.paired:
            return Scores.pairs(rewards, None, ones, None)
        return Scores.pairs(rewards[:b], rewards[b:], ones, ones)


def reward_of_last_token(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """r(x, y) for each row, [R]: the head's output pooled by the model at the row's rightmost
    non-pad token (transformers' convention; with pad == EOS that is the token before the EOS)."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


def bradley_terry(pc: Tensor, pr: Tensor, rc: Tensor | None, rr: Tensor | None, *, beta: float) -> Tensor:
    """Bradley-Terry reward-model loss (Ouyang et al. 2022, eq. 1), reference-free:

        L = -log sigmoid(beta * (r(x, y_w) - r(x, y_l)))      (beta = 1 is the standard loss)

    Shapes: pc, pr [B] (rewards); returns [B]. At initialisation with r_w = r_l, L = ln 2.
    """
    return -F.logsigmoid(beta * (pc - pr))


BRADLEY_TERRY = LossSpec("bradley_terry", bradley_terry, needs_reference=False, score_kinds=("reward",),
                         summary="Bradley-Terry reward model loss (Ouyang et al. 2022)")
