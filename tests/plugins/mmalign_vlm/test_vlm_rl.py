"""Online RL for the VLM plugin: the hallucination verifier on hand-computed captions, the vision
tower run once per group of sampled captions (not once per caption), and GRPO on the shapes world
through the engine, with a scorer that reads the record's ``objects``."""

import json
import math

import pytest
import torch

import mmalign
from mmalign_vlm import shapes
from mmalign_vlm.hallucination import Vocabulary, hallucination_reward
from mmalign_vlm.rl_demo import shapes_hallucination
from test_vlm_sample import draw, make
from vlm_helpers import make_vlm_config, vlm_world  # noqa: F401  (a fixture)


def test_the_verifier_is_recall_minus_the_captions_own_chair_i():
    vocabulary = Vocabulary(shapes.vocabulary())
    truth = [["red circle", "blue square"]] * 4
    captions = ["a red circle and a blue square",  # all present, nothing else: 1 - 0
                "a red circle",  # half the objects: 1/2 - 0
                "a red circle and a green cross",  # 1/2 recall, 1 of 2 mentions absent: 1/2 - 1/2
                "nothing here"]  # silence: 0 - 0
    assert hallucination_reward(captions, truth, vocabulary) == [1.0, 0.5, 0.0, 0.0]
    # the shapes world's scorer: -1 outside the caption grammar
    assert shapes_hallucination([""] * 4, captions, objects=truth) == [1.0, 0.5, 0.0, -1.0]


def test_the_vision_tower_runs_once_per_group_of_sampled_captions(vlm_world):
    reward, model = make(vlm_world)
    samples = draw(reward, model, vlm_world, n=4)  # 2 images x 4 captions
    tower = next(m for name, m in model.named_modules() if name.endswith("vision_tower"))
    images_seen = []
    handle = tower.register_forward_hook(lambda mod, args, kwargs_out: images_seen.append(
        (args[0] if args else None).shape[0] if args else 0))
    try:
        with torch.no_grad():
            scores = reward.score(model, reward.encode(reward.collate(samples.examples)), per_unit=True)
    finally:
        handle.remove()
    assert scores.sums.shape == (2, 4)
    assert sum(images_seen) == 2, images_seen  # one image per context, for its 4 captions


def test_sampled_groups_share_their_prompt_and_score_as_plain_rows(vlm_world):
    """Prefix sharing for groups: [image + prompt | r_1 | ... | r_k] segments give the plain rows'
    scores, per-token scores and gradients (fp32, 1e-5); the tower still sees each image once."""
    from mmalign_vlm.batches import VLMBatch, VLMGroupBatch

    reward, model = make(vlm_world)
    samples = draw(reward, model, vlm_world, n=4)
    shared = reward.collate(samples.examples)
    reward.options["prefix_sharing"] = False
    plain = reward.collate(samples.examples)
    assert isinstance(shared, VLMGroupBatch) and isinstance(plain, VLMBatch)
    assert {c for row in shared.row_groups for c in row} == {0, 1}  # each context's segments placed
    results = []
    for batch in (shared, plain):
        model.zero_grad()
        scores = reward.score(model, batch, per_unit=True)
        scores.sums.sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((scores, grads))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a.sums, b.sums, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.unit_scores, b.unit_scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.unit_mask, b.unit_mask) and len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("algorithm,k", [("grpo", 4), ("rloo", 4), ("remax", 2), ("online_dpo", 2)])
def test_online_algorithms_train_a_vlm_on_the_hallucination_verifier(vlm_world, tmp_path, algorithm, k):
    prompts = vlm_world / "rl-prompts.jsonl"  # beside the images: paths outside the data folder are refused
    rows = [json.loads(line) for line in (vlm_world / "pairs.jsonl").read_text().splitlines()]
    prompts.write_text("".join(json.dumps({key: r[key] for key in ("image", "prompt", "objects")}) + "\n" for r in rows))
    cfg = make_vlm_config(vlm_world, tmp_path, data={"train": str(prompts)}, loss={"beta": 0.02},
                          algorithm={"name": algorithm, "options": {
                              "samples_per_prompt": k, "max_new_tokens": 6,
                              "scorers": {"shapes_hallucination": 1.0}}})
    del cfg["loss"]["name"]
    history = mmalign.train(cfg, log=lambda *a: None).history
    assert len(history) == 3
    for row in history:
        assert -1.0 <= row["rewards/mean"] <= 1.0 and "entropy" not in row  # HF generate records none
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and (final / "README.md").exists()


def test_sampling_prefills_each_context_once_with_the_same_greedy_tokens(vlm_world):
    """k samples of a context: its image and prompt prefilled once, the KV cache repeated; greedy
    decoding gives the tokens of k repeated rows (each encoding the image), contexts of different
    prompt lengths (left padding) included, and the tower sees each image once."""
    from mmalign_vlm.generation import generate_ids, multimodal_token_ids
    from mmalign_vlm.examples import VLMGroup

    reward, model = make(vlm_world)
    groups = draw(reward, model, vlm_world, n=1).examples
    longer = groups[1].prompt_ids + groups[1].prompt_ids[-1:] * 2  # its last (text) token twice more
    groups[1] = VLMGroup(longer, [], groups[1].images, groups[1].where)
    options = dict(max_new_tokens=5, suppress=multimodal_token_ids(reward))
    tower = next(m for name, m in model.named_modules() if name.endswith("vision_tower"))
    images_seen = []
    handle = tower.register_forward_hook(lambda mod, args, out: images_seen.append(args[0].shape[0]))
    try:
        shared = generate_ids(reward, model, groups, repeats=3, **options)
    finally:
        handle.remove()
    plain = generate_ids(reward, model, [g for g in groups for _ in range(3)], **options)
    assert shared == plain and len(shared) == 6
    assert sum(images_seen) == 2, images_seen
