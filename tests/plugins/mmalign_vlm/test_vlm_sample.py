"""The VLM plugin's ``sample``: n completions per (image, prompt) context, deterministic for a
generator state, scored through the same plugin's collate / score as Scores [C, n] equal to the same
completions scored as SFT examples and to a plain HF forward pass; and per-unit scores (per-token
log-probs) on the shared, once-per-pair and plain paths (mDPO's rows too)."""

import json

import pytest
import torch

from mmalign.config import DataConfig, ModelConfig
from mmalign.data import Record
from mmalign_vlm import shapes
from mmalign_vlm.data_options import VLMDataOptions
from mmalign_vlm.examples import VLMExample, VLMGroup
from mmalign_vlm.reward import VLMReward, load_image
from vlm_helpers import vlm_world  # noqa: F401  (a fixture)


def make(root, **options):
    model_cfg = ModelConfig(reward="vlm", tiny=shapes.TINY_LLAVA, tokenizer=str(root / "processor"), options=options)
    torch.manual_seed(0)
    reward = VLMReward(model_cfg, DataConfig(options=VLMDataOptions()))
    return reward, reward.load_policy().eval()


def read_jsonl(path):
    return [Record(json.loads(line), f"{path.name}:{i}", path.parent)
            for i, line in enumerate(path.read_text().splitlines(), start=1)]


def contexts(root, n=2):
    """Contexts as a caller gives them: the records' prompt and image (an absolute path here)."""
    return [{"prompt": r.fields["prompt"], "image": str(root / r.fields["image"])}
            for r in read_jsonl(root / "pairs.jsonl")[:n]]


def draw(reward, model, root, seed=1, n=3):
    return reward.sample(model, contexts(root), n, torch.Generator().manual_seed(seed), max_new_tokens=4)


def hf_token_logps(reward, model, prompt, completion, images):
    """log p(y_t | images, x, y_<t) of each completion token, from the model's own forward."""
    pixels = reward.pixel_values([load_image(v, "test") for v in images])
    with torch.no_grad():
        logps = model(input_ids=torch.tensor([prompt + completion]), pixel_values=pixels).logits.log_softmax(-1)[0]
    return torch.stack([logps[len(prompt) - 1 + j, t] for j, t in enumerate(completion)])


def test_sample_round_trip_equals_sft_scores_and_the_hf_forward(vlm_world):
    reward, model = make(vlm_world)
    samples = draw(reward, model, vlm_world)
    assert len(samples.responses) == 2 and all(len(r) == 3 and all(isinstance(t, str) for t in r)
                                                for r in samples.responses)
    assert all(isinstance(g, VLMGroup) for g in samples.examples)
    assert samples.trajectory["completion_ids"] == [g.completions for g in samples.examples]
    image_token = model.config.image_token_id  # never sampled: it would be taken for an image slot
    assert not any(image_token in c for g in samples.examples for c in g.completions)
    with torch.no_grad():
        scores = reward.score(model, reward.collate(samples.examples), per_unit=True)
        sft = reward.score(model, reward.collate([VLMExample(g.prompt_ids, c, None, g.images, g.where, {})
                                                  for g in samples.examples for c in g.completions]))
    assert scores.sums.shape == (2, 3) and torch.allclose(scores.sums.flatten(), sft.chosen, atol=1e-5)
    assert torch.allclose(scores.unit_scores.sum(-1), scores.sums, atol=1e-5)
    for i, g in enumerate(samples.examples):
        for j, c in enumerate(g.completions):
            assert scores.unit_mask[i, j].sum().item() == len(c)
            direct = hf_token_logps(reward, model, g.prompt_ids, c, g.images)
            assert torch.allclose(scores.unit_scores[i, j, :len(c)], direct, atol=1e-5)


def test_sample_prompt_tokens_are_the_training_prompt_tokens_and_deterministic(vlm_world):
    reward, model = make(vlm_world)
    records = read_jsonl(vlm_world / "pairs.jsonl")[:2]
    state = torch.random.get_rng_state()
    a, b = draw(reward, model, vlm_world, seed=5), draw(reward, model, vlm_world, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.trajectory == b.trajectory and a.responses == b.responses
    assert a.trajectory["prompt_ids"] == [reward.prepare(r, paired=True).prompt_ids for r in records]
    from_records = reward.sample(model, records, 3, torch.Generator().manual_seed(5), max_new_tokens=4)
    assert from_records.trajectory == a.trajectory  # a Record is a context as well


@pytest.mark.parametrize("options", [{}, {"prefix_sharing": False}, {"encode_once": False},
                                     {"corrupted_image": "random_crop"}])
def test_per_unit_scores_are_the_hf_token_log_probs_on_every_pair_path(vlm_world, options):
    reward, model = make(vlm_world, **options)
    exs = [reward.prepare(r, paired=True) for r in read_jsonl(vlm_world / "pairs.jsonl")[:3]]
    with torch.no_grad():
        scores = reward.score(model, reward.collate(exs, torch.Generator().manual_seed(0)), per_unit=True)
    longest = max(len(c) for e in exs for c in (e.chosen_ids, e.rejected_ids))
    assert scores.unit_scores.shape == scores.unit_mask.shape == (3, 2, longest)
    assert torch.allclose(scores.unit_scores.sum(-1), scores.sums, atol=1e-5)
    assert ("chosen_corrupted" in scores.extras) == ("corrupted_image" in options)
    for i, e in enumerate(exs):
        for j, c in enumerate((e.chosen_ids, e.rejected_ids)):
            direct = hf_token_logps(reward, model, e.prompt_ids, c, e.images)
            assert torch.allclose(scores.unit_scores[i, j, :len(c)], direct, atol=1e-5)
            assert not scores.unit_scores[i, j, len(c):].any()
