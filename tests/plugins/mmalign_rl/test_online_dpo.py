"""Online DPO: pairs by reward (best vs worst of k, ties do not train), any pair loss of the registry
on them, the choice of loss checked before anything loads, and the gold reward rising on the tiny
task of the other online tests (fewer words is better)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import DEMO_DATA, TINY

import mmalign
from mmalign.errors import ConfigError, RegistryError
from mmalign.hookspecs import hookimpl
from mmalign.losses import LossSpec
from mmalign.losses.objective import make_objective, objective_loss
from mmalign.plugins import registry
from mmalign.scores import Scores
from mmalign_rl.online_dpo import pair_estimator, pair_scores, pairs_loss, preference_pairs

CALLS: list[list[float]] = []  # the rewards of each call of the gold scorer


def gold(prompts, responses, **columns):
    """The tiny task's gold reward: fewer words is better."""
    rewards = [-len(r.split()) / 8 for r in responses]
    CALLS.append(rewards)
    return rewards


def coin_flips():
    """Preferences that carry no information about the gold reward (a control)."""
    rng = random.Random(0)
    return lambda prompts, responses, **columns: [rng.random() for _ in responses]


def group_loss(policy, reference, *, beta, values):
    return policy.sums.mean(1) * 0


class Plugin:
    @hookimpl
    def mmalign_register_scorers(self, register):
        register("gold", lambda: gold)
        register("coin", coin_flips)

    @hookimpl
    def mmalign_register_losses(self, register):
        register(LossSpec("a_group_loss", group_loss, responses="group"))


@pytest.fixture(autouse=True)
def plugin():
    CALLS.clear()
    with mmalign.register(Plugin(), name="test-online-dpo"):
        yield


def config(tmp_path, steps=1, scorers=None, **options):
    return {
        "output_dir": str(tmp_path / "run"),
        "model": {"reward": "text", "tokenizer": str(DEMO_DATA / "tokenizer"), "tiny": dict(TINY)},
        "data": {"train": str(DEMO_DATA / "train.jsonl"), "max_length": 32},
        "algorithm": {"name": "online_dpo", "options": {"samples_per_prompt": 4, "max_new_tokens": 8,
                                                       "scorers": scorers or {"gold": 1.0}, **options}},
        "loss": {"beta": 0.1},
        "train": {"max_steps": steps, "batch_size": 4, "lr": 3e-2, "lr_scheduler": "constant", "log_every": 1,
                  "progress": False, "callbacks": [], "save_every": 0},
        "eval": {"evaluators": []},
    }


def test_pairs_by_reward_hand_computed():
    chosen, rejected, keep = preference_pairs(torch.tensor([[0.2, 0.9, 0.5]]))
    assert chosen.tolist() == [1] and rejected.tolist() == [0] and keep.tolist() == [True]
    # k = 2 (Guo et al.); equal best or worst rewards: the first index; all equal: no preference
    chosen, rejected, keep = preference_pairs(torch.tensor([[0.0, 1.0], [0.7, 0.1], [0.3, 0.3]]))
    assert chosen.tolist() == [1, 0, 0] and rejected.tolist() == [0, 1, 0]
    assert keep.tolist() == [True, True, False]
    chosen, rejected, keep = preference_pairs(torch.tensor([[0.1, 0.7, 0.7, 0.1]]))
    assert (chosen.item(), rejected.item(), keep.item()) == (1, 0, True)


def test_the_source_logs_the_scorer_rewards_of_the_pairs_and_the_share_of_ties():
    values, metrics = pair_estimator(torch.tensor([[0.2, 0.9, 0.5], [0.4, 0.4, 0.4]]))
    assert values["chosen"].tolist() == [1, 0] and values["rejected"].tolist() == [0, 0]
    assert values["keep"].tolist() == [True, False]
    assert metrics["rewards/chosen"].item() == pytest.approx((0.9 + 0.4) / 2)
    assert metrics["rewards/rejected"].item() == pytest.approx((0.2 + 0.4) / 2)
    assert metrics["rewards/margin"].item() == pytest.approx(0.7 / 2)
    assert metrics["pairs/ties"].item() == 0.5


def scores(sums, requires_grad=False):
    sums = torch.tensor(sums, requires_grad=requires_grad)
    return Scores(sums, torch.ones(sums.shape))


def test_the_pair_loss_trains_the_untied_pairs_only_hand_computed():
    """DPO (beta 0.5) on the pairs of contexts 0 and 2; context 1 ties. Context 0: chosen 1, rejected
    0, h = (-2 + 1.5) - (-1 + 1.5) = -1, loss log(1 + e^0.5); context 2: chosen 2, rejected 0,
    h = (-2 + 2) - (-4 + 2) = 2, loss log(1 + e^-1). The loss is their mean."""
    policy = scores([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [-4.0, -1.0, -2.0]], requires_grad=True)
    reference = scores([[-1.5, -1.5, -1.5], [-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    values = {"chosen": torch.tensor([1, 0, 2]), "rejected": torch.tensor([0, 0, 0]),
              "keep": torch.tensor([True, False, True])}
    spec = pairs_loss(registry().get("losses", "sigmoid"))
    objective = make_objective(spec, beta=0.5, options={"loss_options": {}})
    loss, metrics = objective_loss(objective, policy, reference, values)
    expected = (math.log(1 + math.exp(0.5)) + math.log(1 + math.exp(-1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # dL/dh = -beta * sigmoid(-beta * h) / 2 pairs, + on the chosen and - on the rejected score; the
    # tied context and the responses that are neither chosen nor rejected get none
    g0, g2 = 0.5 * torch.sigmoid(torch.tensor(0.5)).item() / 2, 0.5 * torch.sigmoid(torch.tensor(-1.0)).item() / 2
    expected_grad = torch.tensor([[g0, -g0, 0.0], [0.0, 0.0, 0.0], [g2, 0.0, -g2]])
    assert torch.allclose(policy.sums.grad, expected_grad, atol=1e-7)
    # implicit rewards 0.5 * (policy - reference) of every context's pair: (-0.25 vs 0.25), the tie's
    # one response twice (0 vs 0: margin 0, not accurate), (0 vs -1)
    assert metrics["implicit_rewards/accuracies"].item() == pytest.approx(1 / 3)
    assert metrics["implicit_rewards/margins"].item() == pytest.approx((-0.5 + 0.0 + 1.0) / 3)
    assert metrics["implicit_rewards/chosen"].item() == pytest.approx((-0.25 + 0.0 + 0.0) / 3)
    assert metrics["implicit_rewards/rejected"].item() == pytest.approx((0.25 + 0.0 - 1.0) / 3)


def test_a_sampled_pair_scores_as_the_same_pair_offline():
    """The pair columns taken from the sampled group's Scores equal the text plugin's scores of the
    same (prompt, chosen, rejected) as an offline pair (its shared-prefix path), to 1e-5."""
    from mmalign.config import load_config
    from mmalign_text.records import TextExample
    from mmalign_text.reward import TextReward

    cfg = load_config(data={"model": {"tiny": dict(TINY), "tokenizer": str(DEMO_DATA / "tokenizer")},
                            "data": {"max_length": 32}})
    torch.manual_seed(0)
    plugin = TextReward(cfg.model, cfg.data)
    model = plugin.load_policy()
    samples = plugin.sample(model, [{"prompt": "The movie was"}, {"prompt": "I think"}], 3,
                            torch.Generator().manual_seed(1), max_new_tokens=6)
    chosen, rejected, _ = preference_pairs(torch.tensor([[0.2, 0.9, 0.5], [0.1, 0.0, 0.3]]))
    with torch.no_grad():
        group = plugin.score(model, plugin.collate(samples.examples))
        offline = [TextExample(g.prompt_ids, g.completions[c], g.completions[r], "pair")
                   for g, c, r in zip(samples.examples, chosen.tolist(), rejected.tolist())]
        expected = plugin.score(model, plugin.collate(offline))
    pairs = pair_scores(group, chosen, rejected)
    assert pairs.k == 2 and torch.allclose(pairs.sums, expected.sums, atol=1e-5)
    assert torch.equal(pairs.units, expected.units)


def test_a_micro_batch_of_ties_does_not_train():
    policy = scores([[-1.0, -2.0], [-3.0, -1.0]], requires_grad=True)
    values = {"chosen": torch.tensor([0, 0]), "rejected": torch.tensor([0, 0]), "keep": torch.tensor([False, False])}
    objective = make_objective(pairs_loss(registry().get("losses", "ipo")), beta=0.1, options={})
    loss, metrics = objective_loss(objective, policy, scores([[0.0, 0.0], [0.0, 0.0]]), values)
    loss.backward()
    assert loss.item() == 0 and policy.sums.grad.abs().sum() == 0
    # the same metric keys as any micro-batch (every process must log the same ones): no margin
    assert metrics["implicit_rewards/margins"].item() == 0 and metrics["implicit_rewards/accuracies"].item() == 0


def test_an_online_dpo_step_logs_what_users_read(tmp_path):
    row = mmalign.train(config(tmp_path), log=lambda *a: None).history[-1]
    (rewards,) = CALLS  # one scorer call: 4 prompts x 4 samples
    rewards = torch.tensor(rewards).view(4, 4)
    assert row["rewards/chosen"] == pytest.approx(rewards.amax(1).mean().item(), abs=1e-6)
    assert row["rewards/rejected"] == pytest.approx(rewards.amin(1).mean().item(), abs=1e-6)
    ties = (rewards.amax(1) == rewards.amin(1)).float().mean().item()
    assert row["pairs/ties"] == pytest.approx(ties)
    assert ties < 1  # this seed samples some preferences: then the step trains them
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at step 1: DPO's ln 2
    for key in ("rewards/margin", "rewards/mean", "implicit_rewards/accuracies", "implicit_rewards/margins",
                "logps/chosen", "logps/rejected", "completions/mean_length", "grad_norm"):
        assert key in row, key


@pytest.mark.parametrize("options, key, error", [
    ({"loss": "kto"}, "algorithm.options.loss", ConfigError),  # unpaired
    ({"loss": "a_group_loss"}, "algorithm.options.loss", ConfigError),
    ({"loss": "simpo"}, "algorithm.options.loss", ConfigError),  # reference-free
    ({"loss": "mdpo"}, "algorithm.options.loss", ConfigError),  # needs an image-corrupted score
    ({"loss": "nope"}, "algorithm.options.loss", RegistryError),
    ({"loss_options": {"smoothing": 0.1}}, "algorithm.options.loss_options.smoothing", ConfigError),
    ({"loss_options": {"label_smoothing": 0.7}}, "algorithm.options.loss_options.label_smoothing", ConfigError),
    ({"loss": "weighted", "loss_options": {"terms": {"nope": 1.0}}}, "algorithm.options.loss_options.terms.nope",
     ConfigError),
    ({"samples_per_prompt": 1}, "algorithm.options.samples_per_prompt", ConfigError),
])
def test_bad_online_dpo_options_are_refused_before_anything_loads(tmp_path, options, key, error):
    with pytest.raises(error, match=key.replace(".", r"\.")) as caught:
        mmalign.train(config(tmp_path, **options), log=lambda *a: None)
    assert caught.value.exit_code == 2
    assert not (tmp_path / "run").exists()


def test_online_dpo_refuses_beta_0_and_no_reference(tmp_path):
    cfg = config(tmp_path)
    cfg["loss"]["beta"] = 0.0
    with pytest.raises(ConfigError, match="loss.beta"):
        mmalign.train(cfg, log=lambda *a: None)
    cfg = config(tmp_path)
    cfg["reference"] = {"strategy": "none"}
    with pytest.raises(ConfigError, match="reference.strategy"):
        mmalign.train(cfg, log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def gold_before_and_after(tmp_path, scorers, samples, loss, steps=20) -> tuple[float, float]:
    cfg = config(tmp_path, steps, scorers, samples_per_prompt=samples, loss=loss)
    rows = mmalign.train(cfg, log=lambda *a: None).history
    gold_rewards = [row["rewards/gold"] for row in rows]
    return sum(gold_rewards[:3]) / 3, sum(gold_rewards[-3:]) / 3


@pytest.mark.slow
@pytest.mark.parametrize("samples, loss", [(2, "sigmoid"), (4, "sigmoid"), (4, "ipo"), (4, "hinge")])
def test_online_dpo_raises_the_gold_reward(tmp_path, samples, loss):
    before, after = gold_before_and_after(tmp_path, {"gold": 1.0}, samples, loss)
    assert after > before + 0.3, (before, after)


@pytest.mark.slow
def test_preferences_that_ignore_the_gold_reward_do_not_raise_it(tmp_path):
    """The control of the test above: the same run with coin-flip labels (the gold scorer logged
    at weight 0) leaves the gold reward where it was."""
    before, after = gold_before_and_after(tmp_path, {"coin": 1.0, "gold": 0.0}, 4, "sigmoid")
    assert after < before + 0.1, (before, after)
