"""Object hallucination metrics: CHAIR (Rohrbach et al. 2018) and a POPE-style yes/no probe
(Li et al. 2023).

CHAIR_i = hallucinated object mentions / all object mentions
CHAIR_s = captions with at least one hallucinated object / all captions
recall  = ground-truth objects mentioned / all ground-truth objects (so that saying nothing is no win)
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Vocabulary:
    """Object names and their synonyms: ``{"dog": ["dog", "puppy"], ...}``. Matching is on whole
    words (multi-word synonyms allowed), longest synonym first."""

    synonyms: dict[str, list[str]]

    def mentions(self, caption: str) -> list[str]:
        """Canonical object names mentioned in ``caption``, in order, each once."""
        text = " " + re.sub(r"[^a-z0-9 ]+", " ", caption.lower()) + " "
        found: list[tuple[int, str]] = []
        pairs = sorted(((s.lower(), obj) for obj, syns in self.synonyms.items() for s in syns),
                       key=lambda p: -len(p[0]))
        for syn, obj in pairs:
            for match in re.finditer(r"(?<= )" + re.escape(syn) + r"(?= )", text):
                span = range(match.start(), match.end())
                if not any(match.start() in taken for _, _, taken in found):
                    found.append((match.start(), obj, span))
        ordered, seen = [], set()
        for _, obj, _ in sorted(found):
            if obj not in seen:
                ordered.append(obj)
                seen.add(obj)
        return ordered


def chair(captions: list[str], ground_truth: list[list[str]], vocabulary: Vocabulary) -> dict[str, float]:
    mentions = hallucinated = captions_with = gt_total = gt_hit = 0
    for caption, truth in zip(captions, ground_truth):
        said = vocabulary.mentions(caption)
        wrong = [o for o in said if o not in truth]
        mentions += len(said)
        hallucinated += len(wrong)
        captions_with += bool(wrong)
        gt_total += len(truth)
        gt_hit += sum(o in said for o in truth)
    return {"chair_i": hallucinated / max(1, mentions), "chair_s": captions_with / max(1, len(captions)),
            "recall": gt_hit / max(1, gt_total), "captions": len(captions)}


def pope(answers: list[bool], labels: list[bool]) -> dict[str, float]:
    """POPE metrics of yes/no answers (True = yes) against labels (True = object present)."""
    tp = sum(a and l for a, l in zip(answers, labels))
    fp = sum(a and not l for a, l in zip(answers, labels))
    fn = sum((not a) and l for a, l in zip(answers, labels))
    tn = sum((not a) and (not l) for a, l in zip(answers, labels))
    n = max(1, len(answers))
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(1e-12, precision + recall), "yes_ratio": (tp + fp) / n}


def hallucination_reward(captions: list[str], ground_truth: list[list[str]], vocabulary: Vocabulary) -> list[float]:
    """A verifier for online RL: per caption, recall minus its own CHAIR_i,

        r = |said & truth| / |truth| - |said - truth| / max(1, |said|)     in [-1, 1],

    so naming every object present and nothing else scores 1, an absent object costs its share of
    the mentions, and saying nothing scores 0 (no win from silence)."""
    rewards = []
    for caption, truth in zip(captions, ground_truth):
        said = vocabulary.mentions(caption)
        wrong = sum(o not in truth for o in said)
        rewards.append(sum(o in said for o in truth) / max(1, len(truth)) - wrong / max(1, len(said)))
    return rewards
