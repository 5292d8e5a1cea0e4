"""The text plugin's ``sample``: n completions per context, deterministic for a generator state,
scored through the same plugin's collate / score as Scores [C, n] equal to the same completions
scored as SFT examples and pairs; and per-unit scores (per-token log-probs) on every scoring path,
equal to a plain HF forward pass."""

from pathlib import Path

import pytest
import torch

from conftest import TINY
from mmalign.config import DataConfig, ModelConfig
from mmalign.data import Record
from mmalign_text.data_options import TextDataOptions
from mmalign_text.records import TextExample
from mmalign_text.reward import TextReward
from mmalign_text.sampling import TextGroup

CONTEXTS = [{"prompt": "great kaka lolo"}, {"prompt": "dull"}, {"prompt": "kaka lo ren tu"}]
RECORDS = [
    {"prompt": "great kaka lolo", "chosen": " superb mimi dull", "rejected": " awful"},
    {"prompt": "dull", "chosen": " brilliant kalo kalo kalo mi", "rejected": " boring lomi tu"},
    {"prompt": "kaka lo ren tu sa vo pel", "chosen": " great", "rejected": " dreadful kaka"},
]


def make(tokenizer_dir, **options):
    model_cfg = ModelConfig(tiny=dict(TINY), tokenizer=str(tokenizer_dir), options=options)
    torch.manual_seed(0)
    reward = TextReward(model_cfg, DataConfig(options=TextDataOptions(max_length=64)))
    return reward, reward.load_policy().eval()


def draw(reward, model, seed=1, n=3, **options):
    return reward.sample(model, CONTEXTS, n, torch.Generator().manual_seed(seed), max_new_tokens=5, **options)


def hf_token_logps(model, prompt, completion):
    """log p(y_t | x, y_<t) of each completion token, from the plain HF forward pass."""
    with torch.no_grad():
        logps = model(torch.tensor([prompt + completion])).logits.log_softmax(-1)[0]
    return torch.stack([logps[len(prompt) - 1 + j, t] for j, t in enumerate(completion)])


def test_sample_shapes_and_round_trip_through_collate_and_score(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    samples = draw(reward, model)
    assert len(samples.responses) == 3 and all(len(r) == 3 and all(isinstance(t, str) for t in r)
                                                for r in samples.responses)
    assert samples.contexts == CONTEXTS and all(isinstance(g, TextGroup) for g in samples.examples)
    completions = samples.trajectory["completion_ids"]
    assert all(1 <= len(c) <= 5 for cs in completions for c in cs)
    with torch.no_grad():
        scores = reward.score(model, reward.collate(samples.examples, torch.Generator()))
    assert scores.sums.shape == (3, 3) and scores.units.tolist() == [[len(c) for c in cs] for cs in completions]
    for i, group in enumerate(samples.examples):
        for j, completion in enumerate(group.completions):
            direct = hf_token_logps(model, group.prompt_ids, completion).sum()
            assert scores.sums[i, j].item() == pytest.approx(direct.item(), abs=1e-5)


def test_group_scores_equal_sft_and_pair_scores(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    groups = draw(reward, model, n=2).examples
    with torch.no_grad():
        group = reward.score(model, reward.collate(groups))
        sft = reward.score(model, reward.collate([TextExample(g.prompt_ids, c, None, g.where)
                                                  for g in groups for c in g.completions]))
        pairs = [TextExample(g.prompt_ids, *g.completions, g.where) for g in groups
                 if g.completions[0] != g.completions[1]]
        shared = reward.score(model, reward.collate(pairs))  # prefix sharing + packing
    assert torch.allclose(group.sums.flatten(), sft.chosen, atol=1e-5)
    kept = [i for i, g in enumerate(groups) if g.completions[0] != g.completions[1]]
    assert kept and torch.allclose(shared.sums, group.sums[kept], atol=1e-5)


def test_sample_prompt_tokens_are_the_training_prompt_tokens(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    samples = draw(reward, model, n=1)
    for i, context in enumerate(CONTEXTS):
        example = reward.prepare(Record({**context, "completion": " great"}, f"t:{i}", Path(".")), paired=False)
        assert samples.trajectory["prompt_ids"][i] == example.prompt_ids == samples.examples[i].prompt_ids


def test_sample_is_deterministic_for_a_generator_state_and_leaves_the_global_rng(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    state = torch.random.get_rng_state()
    a, b, c = draw(reward, model, seed=7), draw(reward, model, seed=7), draw(reward, model, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.trajectory == b.trajectory and a.responses == b.responses
    assert a.trajectory != c.trajectory
    greedy_ish = draw(reward, model, seed=7, temperature=0.05, top_p=0.5)
    assert len(greedy_ish.responses) == 3


@pytest.mark.parametrize("options", [{}, {"packing": False}, {"prefix_sharing": False}])
def test_per_unit_scores_are_the_hf_token_log_probs_on_every_pair_path(tokenizer_dir, options):
    reward, model = make(tokenizer_dir, **options)
    exs = [reward.prepare(Record(r, f"t:{i}", Path(".")), paired=True) for i, r in enumerate(RECORDS)]
    with torch.no_grad():
        scores = reward.score(model, reward.collate(exs), per_unit=True)
    longest = max(len(c) for e in exs for c in (e.chosen_ids, e.rejected_ids))
    assert scores.unit_scores.shape == scores.unit_mask.shape == (3, 2, longest)
    assert torch.allclose(scores.unit_scores.sum(-1), scores.sums, atol=1e-5)
    _assert_tokens_match(model, scores, [[(e.prompt_ids, e.chosen_ids), (e.prompt_ids, e.rejected_ids)] for e in exs])


def test_per_unit_scores_agree_across_paths_with_an_empty_prompt(tokenizer_dir):
    """An empty prompt leaves each completion's first token unscored, on every path alike."""
    rows = [{"prompt": "", "chosen": " superb mimi", "rejected": " awful kaka lo"}, RECORDS[1]]
    got = []
    for options in ({}, {"prefix_sharing": False}):
        reward, model = make(tokenizer_dir, **options)
        exs = [reward.prepare(Record(r, f"t:{i}", Path(".")), paired=True) for i, r in enumerate(rows)]
        with torch.no_grad():
            got.append(reward.score(model, reward.collate(exs), per_unit=True))
    assert torch.equal(got[0].unit_mask, got[1].unit_mask) and torch.equal(got[0].units, got[1].units)
    assert torch.allclose(got[0].unit_scores, got[1].unit_scores, atol=1e-5)


def test_per_unit_scores_of_sft_kto_and_sampled_groups(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    sft = [reward.prepare(Record({"prompt": r["prompt"], "completion": r["chosen"], "label": i != 1},
                                 f"t:{i}", Path(".")), paired=False) for i, r in enumerate(RECORDS)]
    groups = draw(reward, model).examples
    for exs, responses in ((sft, [[(e.prompt_ids, e.chosen_ids)] for e in sft]),
                           (groups, [[(g.prompt_ids, c) for c in g.completions] for g in groups])):
        with torch.no_grad():
            scores = reward.score(model, reward.collate(exs), per_unit=True)
        assert torch.allclose(scores.unit_scores.sum(-1), scores.sums, atol=1e-5)
        _assert_tokens_match(model, scores, responses)


def test_per_unit_gradients_flow_and_wpo_weights_are_weights(tokenizer_dir):
    for options in ({"wpo": True}, {"wpo": True, "prefix_sharing": False}):
        reward, model = make(tokenizer_dir, **options)
        exs = [reward.prepare(Record(r, f"t:{i}", Path(".")), paired=True) for i, r in enumerate(RECORDS)]
        scores = reward.score(model, reward.collate(exs), per_unit=True)
        assert scores.weights.shape == (3,) and "pair_weight" not in scores.extras
        scores.unit_scores.sum().backward()
        assert model.lm_head.weight.grad is not None or model.model.embed_tokens.weight.grad is not None


def test_reward_model_has_no_per_unit_scores_and_does_not_sample(tokenizer_dir):
    from mmalign.errors import ConfigError
    from mmalign_text.reward_model import RewardModel

    model_cfg = ModelConfig(reward="reward_model", tiny=dict(TINY), tokenizer=str(tokenizer_dir))
    reward = RewardModel(model_cfg, DataConfig(options=TextDataOptions(max_length=64)))
    model = reward.load_policy().eval()
    exs = [reward.prepare(Record(r, f"t:{i}", Path(".")), paired=True) for i, r in enumerate(RECORDS)]
    assert not reward.per_unit_scores and reward.score(model, reward.collate(exs)).sums.shape == (3, 2)
    with pytest.raises(ConfigError, match="per token"):
        reward.score(model, reward.collate(exs), per_unit=True)
    with pytest.raises(NotImplementedError):
        reward.sample(model, CONTEXTS, 2, torch.Generator())


def _assert_tokens_match(model, scores, responses):
    """unit_scores[c, j] holds response j's token log-probs, left-aligned, masked after its end."""
    for c, row in enumerate(responses):
        for j, (prompt, completion) in enumerate(row):
            n = len(completion)
            assert scores.unit_mask[c, j].tolist() == [1] * n + [0] * (scores.unit_mask.shape[-1] - n)
            assert torch.allclose(scores.unit_scores[c, j, :n], hf_token_logps(model, prompt, completion), atol=1e-5)
            assert not scores.unit_scores[c, j, n:].any()
