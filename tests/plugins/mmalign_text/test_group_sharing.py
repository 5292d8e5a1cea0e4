"""Prefix sharing for sampled groups: k responses to a prompt in one segment (or a few) give the
plain rows' Scores (sums, units, per-token scores and mask) and gradients to 1e-5 in fp32, on every
layout (one segment per context, several, packed or not, the plain fallback), with sdpa and eager
attention and on a sliding-window model; and the segment size follows the cost estimate."""

import pytest
import torch

from conftest import TINY
from mmalign.config import load_config
from mmalign_text import layer_masks
from mmalign_text.group_sharing import SharedGroupBatch, collate_groups, cost_ratio, responses_per_segment
from mmalign_text.reward import TextBatch, TextReward
from mmalign_text.sampling import TextGroup

EOS = 2
# Responses of different lengths, some ending with EOS (sampled ones that finished), one of a
# single token, one that is EOS alone; prompts of 5, 1 and 3 tokens.
GROUPS = [
    TextGroup([1, 40, 41, 42, 43], [[50, 51, 52, EOS], [60], [70, 71, 72, 73, 74, 75], [EOS]], "g:0"),
    TextGroup([1], [[80, 81], [90, 91, 92, 93, EOS], [100, EOS], [110, 111, 112]], "g:1"),
    TextGroup([1, 44, 45], [[120], [121, 122, 123], [124, 125, EOS], [126, 127, 128, 129, 130, EOS]], "g:2"),
]
MISTRAL = dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, sliding_window=3)


def make(tokenizer_dir, tiny=TINY, **options):
    cfg = load_config(data={"model": {"tiny": dict(tiny), "tokenizer": str(tokenizer_dir), "options": options}})
    torch.manual_seed(0)
    reward = TextReward(cfg.model, cfg.data)
    return reward, reward.load_policy().eval()


def scores_and_grads(reward, model, batch):
    """Per-unit Scores and the gradients of a loss that weights every token differently."""
    model.zero_grad()
    s = reward.score(model, batch, per_unit=True)
    weights = torch.linspace(-1, 1, s.unit_scores.numel()).view_as(s.unit_scores)
    ((s.unit_scores * weights).sum() + 0.3 * s.sums.sum()).backward()
    return s, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def layouts(pad: int):
    """Every shared layout of GROUPS: one segment per context, 2 and 3 responses per segment,
    packed (several segments in a row) and not."""
    out = {}
    for s in (4, 2, 3):
        for pack in (True, False):
            out[f"s={s}, pack={pack}"] = collate_groups(GROUPS, pad, pack=pack, per_segment=s)
    return out


def test_a_batch_counts_each_token_its_forward_reads_once(tokenizer_dir):
    reward, _ = make(tokenizer_dir, prefix_sharing=False)
    prompts, responses = 5 + 1 + 3, 12 + 12 + 13
    plain = reward.batch_counts(reward.collate(GROUPS))["tokens"]
    assert int(plain) == 4 * prompts + responses  # a plain row per response, each with its prompt
    for s, segments in ((4, 1), (2, 2), (3, 2)):  # a segment per s responses, each with the prompt once
        for pack in (True, False):
            batch = collate_groups(GROUPS, reward.tokenizer.pad_token_id, pack=pack, per_segment=s)
            assert int(reward.batch_counts(batch)["tokens"]) == segments * prompts + responses, (s, pack)


def hf_token_logps(model, prompt, completion):
    with torch.no_grad():
        logps = model(torch.tensor([prompt + completion])).logits.log_softmax(-1)[0]
    return torch.stack([logps[len(prompt) - 1 + j, t] for j, t in enumerate(completion)])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_groups_equal_the_plain_rows_in_scores_and_gradients(tokenizer_dir, attn):
    reward, model = make(tokenizer_dir, attn_implementation=attn, prefix_sharing=False)
    plain = reward.collate(GROUPS)
    assert isinstance(plain, TextBatch) and plain.input_ids.shape[0] == 12
    expected, expected_grads = scores_and_grads(reward, model, plain)
    assert expected.unit_scores.shape == expected.unit_mask.shape == (3, 4, 6)
    assert expected.units.tolist() == [[4, 1, 6, 1], [2, 5, 2, 3], [1, 3, 3, 6]]
    for c, g in enumerate(GROUPS):  # and the plain rows are the model's own forward on each sequence
        for j, completion in enumerate(g.completions):
            direct = hf_token_logps(model, g.prompt_ids, completion)
            assert torch.allclose(expected.unit_scores[c, j, :len(completion)], direct, atol=1e-5)
    shared = layouts(reward.tokenizer.pad_token_id)
    assert shared["s=4, pack=False"].input_ids.shape == (3, 5 + 4 + 1 + 6 + 1)
    assert shared["s=2, pack=False"].input_ids.shape[0] == 6
    assert shared["s=3, pack=True"].input_ids.shape[0] == 4 < 6  # segments 16 | 10 + 6 | 10 + 4 | 9
    for name, batch in [*shared.items(), ("s=4, full logits", shared["s=4, pack=True"])]:
        reward.cfg.options["fused_logps"] = name != "s=4, full logits"
        s, grads = scores_and_grads(reward, model, batch)
        assert torch.equal(s.units, expected.units) and torch.equal(s.unit_mask, expected.unit_mask), name
        assert torch.allclose(s.sums, expected.sums, atol=1e-5), name
        assert torch.allclose(s.unit_scores, expected.unit_scores, atol=1e-5), name
        assert grads.keys() == expected_grads.keys()
        for param, g in grads.items():
            assert torch.allclose(g, expected_grads[param], atol=1e-5), (name, param)


def test_the_plain_fallback_and_a_sliding_window_model_give_the_plain_scores(tokenizer_dir):
    for tiny in (TINY, MISTRAL):
        reward, model = make(tokenizer_dir, tiny=tiny, prefix_sharing=False)
        expected, expected_grads = scores_and_grads(reward, model, reward.collate(GROUPS))
        batch = collate_groups(GROUPS, reward.tokenizer.pad_token_id, per_segment=4)
        runs = [scores_and_grads(reward, model, batch)]
        layer_masks._plans[model] = None  # a pattern the mask cannot reproduce: plain rows gathered
        runs.append(scores_and_grads(reward, model, batch))
        layer_masks._plans.pop(model)
        for s, grads in runs:
            assert torch.allclose(s.unit_scores, expected.unit_scores, atol=1e-5), tiny["model_type"]
            for param, g in grads.items():
                assert torch.allclose(g, expected_grads[param], atol=1e-5), (tiny["model_type"], param)
    assert batch.input_ids.shape[1] > 2 * MISTRAL["sliding_window"]  # the window matters


def test_an_empty_prompt_leaves_each_first_token_unscored_as_on_the_plain_rows(tokenizer_dir):
    groups = [TextGroup([], [[50, 51, EOS], [60, 61]], "g:0"), TextGroup([1, 40], [[70], [80, 81, 82]], "g:1")]
    reward, model = make(tokenizer_dir, prefix_sharing=False)
    with torch.no_grad():
        expected = reward.score(model, reward.collate(groups), per_unit=True)
        shared = reward.score(model, collate_groups(groups, 0), per_unit=True)
    assert expected.units.tolist() == [[2, 1], [1, 3]]
    assert torch.equal(shared.unit_mask, expected.unit_mask)
    assert torch.allclose(shared.unit_scores, expected.unit_scores, atol=1e-5)


def test_collate_shares_prompts_by_default_and_not_when_switched_off(tokenizer_dir):
    long_prompt = [TextGroup([1] + list(range(10, 40)), [[50, EOS], [60], [70, 71], [80, EOS]], "g:0")]
    reward, _ = make(tokenizer_dir)
    batch = reward.collate(long_prompt)
    assert isinstance(batch, SharedGroupBatch) and batch.input_ids.shape == (1, 31 + 7)
    reward, _ = make(tokenizer_dir, prefix_sharing=False)
    assert isinstance(reward.collate(long_prompt), TextBatch)
    reward, _ = make(tokenizer_dir)
    single = [TextGroup(g.prompt_ids, g.completions[:1], g.where) for g in GROUPS]
    assert isinstance(reward.collate(single), TextBatch)  # k = 1: nothing to share


def test_segment_size_follows_the_cost_estimate():
    # a = 1 per token and b = ratio per token pair; C ceil(k / s) rows of the widest segment
    assert responses_per_segment([64, 64], [[64] * 8] * 2, None) == 8  # unknown model: one segment
    assert responses_per_segment([64], [[64] * 8], 0.0) == 8  # attention free: share everything
    # P = L = 64, b / a = 1 / 1024: s = 4 costs 2 * (320 + 100) = 840; s = 8: 576 + 324 = 900;
    # s = 2: 4 * (192 + 36) = 912; s = 1 (plain rows): 8 * (128 + 16) = 1152
    assert responses_per_segment([64], [[64] * 8], 1 / 1024) == 4
    assert responses_per_segment([4], [[512] * 8], 1 / 1024) == 1  # long answers, short prompt: plain rows
    assert responses_per_segment([2048], [[16] * 8], 1 / 4096) == 8  # long prompt, short answers
    llama = type("Config", (), dict(hidden_size=256, intermediate_size=688))()
    assert cost_ratio(llama) == pytest.approx(2 / (4 * 256 + 3 * 688))
    gpt2 = type("Config", (), dict(n_embd=32, n_inner=None))()
    assert cost_ratio(gpt2) == pytest.approx(2 / (4 * 32 + 3 * 128))
    assert cost_ratio(type("Config", (), {})()) is None


def test_a_value_model_reads_the_same_values_from_a_shared_batch(tokenizer_dir):
    """PPO's critic scores the plain rows gathered from a shared batch: the same [C, k, U] values."""
    reward, model = make(tokenizer_dir, prefix_sharing=False)
    critic = reward.load_value_model(model, None)
    torch.nn.init.normal_(critic.score.weight)
    with torch.no_grad():
        expected = reward.unit_values(critic, reward.collate(GROUPS))
        shared = reward.unit_values(critic, collate_groups(GROUPS, reward.tokenizer.pad_token_id, per_segment=3))
    assert expected.shape == (3, 4, 6) and torch.allclose(shared, expected, atol=1e-6)
