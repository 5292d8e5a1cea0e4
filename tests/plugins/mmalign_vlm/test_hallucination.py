import math

import pytest
import torch

from mmalign_vlm.hallucination import Vocabulary, chair, pope
from mmalign_vlm.losses import mdpo
from mmalign_vlm.shapes import caption, parse

VOCAB = Vocabulary({"dog": ["dog", "puppy"], "hot dog": ["hot dog"], "cat": ["cat"], "car": ["car"]})


def test_mentions_use_synonyms_and_longest_match():
    assert VOCAB.mentions("A puppy eats a hot dog near a cat.") == ["dog", "hot dog", "cat"]


def test_chair_hand_computed():
    captions = ["a dog and a cat", "a car", "a dog"]
    truth = [["dog"], ["car"], ["dog", "cat"]]
    scores = chair(captions, truth, VOCAB)
    # mentions: 2 + 1 + 1 = 4, hallucinated: cat in caption 1 -> 1
    assert scores["chair_i"] == pytest.approx(1 / 4)
    assert scores["chair_s"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(3 / 4)  # dog, car, dog of dog+cat


def test_pope_hand_computed():
    answers = [True, True, False, False, True]
    labels = [True, False, True, False, True]
    s = pope(answers, labels)  # tp 2, fp 1, fn 1, tn 1
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3) and s["yes_ratio"] == pytest.approx(3 / 5)


def test_caption_grammar():
    assert parse(caption(["red circle", "blue cross"])) == ["red circle", "blue cross"]
    for bad in ["", "a red", "a red circle a blue cross", "a red circle and a red circle", "red circle"]:
        assert parse(bad) is None


def test_mdpo_hand_computed():
    pc, pr, rc, rr = torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-5.0]), torch.tensor([-5.0])
    corrupted = (torch.tensor([-7.0]), torch.tensor([-6.0]))  # (policy, reference)
    out = mdpo(pc, pr, rc, rr, beta=1.0, chosen_corrupted=corrupted, conditional_weight=0.5, anchor_weight=2.0)
    sp = lambda x: math.log(1 + math.exp(-x))  # noqa: E731  -log sigmoid(x)
    # h = (1) - (-1) = 2; chosen ratio 1, corrupted ratio -1 -> cond on 2; anchor on 1
    assert out.item() == pytest.approx(sp(2) + 0.5 * sp(2) + 2.0 * sp(1), abs=1e-6)
