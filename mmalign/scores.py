"""Scores, the one thing a modality plugin hands the engine, and the implicit reward built on them.

A batch holds C contexts (prompts, captions, states) with k responses each: k = 2 for preference
pairs (chosen first), k = 1 for SFT and unpaired (KTO) data, k = G for an online group. For every
response the plugin supplies its summed score s(x, y) and its number of scored units (response
tokens, denoising steps, actions); when a loss asks, also the score of every unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Scores:
    """Scores of C contexts x k responses.

    sums:        [C, k]     s(x, y): summed log-probs (text, VLM), negative weighted denoising
                            error (diffusion), reward (a reward model)
    units:       [C, k]     scored units per response (tokens; 1 per diffusion sample)
    unit_scores: [C, k, U]  the score of each unit (token log-probs), or None when not asked for
    unit_mask:   [C, k, U]  1 where ``unit_scores`` holds a unit
    extras:      {name: [C]} further scores a loss declares (mDPO's "chosen_corrupted", KTO's
                            "mismatched"); per context
    weights:     [C] or None  per-context loss weights from the plugin (WPO)
    """

    sums: Tensor
    units: Tensor
    unit_scores: Optional[Tensor] = None
    unit_mask: Optional[Tensor] = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    weights: Optional[Tensor] = None

    @classmethod
    def pairs(cls, chosen: Tensor, rejected: Optional[Tensor], chosen_units: Tensor,
              rejected_units: Optional[Tensor], **fields) -> "Scores":
        """From per-pair tensors [C] (``rejected`` None: one response per context)."""
        if rejected is None:
            return cls(chosen[:, None], chosen_units[:, None], **fields)
        return cls(torch.stack([chosen, rejected], 1), torch.stack([chosen_units, rejected_units], 1),
                   **fields)

    @property
    def k(self) -> int:
        """Responses per context."""
        return self.sums.shape[1]

    @property
    def chosen(self) -> Tensor:
        """[C] the first response's score (the chosen one of a pair)."""
        return self.sums[:, 0]

    @property
    def rejected(self) -> Optional[Tensor]:
        """[C] the second response's score of a pair; None with one response per context."""
        return self.sums[:, 1] if self.k > 1 else None

    @property
    def chosen_lengths(self) -> Tensor:
        return self.units[:, 0]

    @property
    def rejected_lengths(self) -> Optional[Tensor]:
        return self.units[:, 1] if self.k > 1 else None


def implicit_reward(policy: Tensor, reference: Optional[Tensor], beta: float) -> Tensor:
    """The implicit reward of DPO (Rafailov et al. 2023, section 5):

        r(x, y) = beta * (s_theta(x, y) - s_ref(x, y))

    with s_ref = 0 for reference-free losses (``reference`` None). Any shape; returns the same."""
    return beta * (policy - reference) if reference is not None else beta * policy
