"""The online half of ``mmalign sweep`` (DPO paper, figure 2 left): PPO with a reward model mmalign
trains on the demo's pairs, PPO with the gold reward (PPO-GT), GRPO, ReMax and RLOO with the same
reward model, and Best-of-N sampling from the reference, all from the SFT reference the offline
runs start from, and all evaluated by the same ``compare`` (gold reward, sampled KL, win rate).

- Reward model: ``model.reward: reward_model``, loss ``bradley_terry``, started from the SFT model,
  trained on the gold-labelled pairs; used through the registered scorer ``reward_model``.
- Online runs read ``data/prompts.jsonl`` (records ``{"prompt": ...}`` from ``sentiment.prompts``)
  and sample ``COMPLETION_WORDS + 1`` new tokens, as the demo does; each method runs at one or two
  KL settings (``loss.beta``).
- Best-of-N: N samples per held-out prompt from the reference, the reward model keeps the best.
  Its KL is the analytic value log N - (N - 1) / N (Stiennon et al. 2020, appendix G.3; the DPO
  paper's figure 2 uses it): the exact KL of the best-of-N distribution for continuous rewards
  without ties, an upper bound otherwise (Beirami et al. 2024).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import NamedTuple

from mmalign.config import load_config
from mmalign.engine import train
from mmalign_text import sentiment
from mmalign_text.best_of_n import RewardModelScorer, best_of_n
from mmalign_text.demo import compare

ONLINE_METHODS = ("ppo", "ppo_gt", "grpo", "remax", "rloo", "best_of_n")

# rl_steps optimizer steps of rl_batch prompts; PPO trains each rollout `epochs` times (one step each)
ONLINE_FULL = dict(rl_prompts=2000, rm_steps=300, rm_lr=1e-3, rl_batch=16, rl_steps=100, rl_lr=1e-4,
                   ppo_steps=100, ppo_lr=1e-4, bon_n=(4, 16, 64, 128))
ONLINE_QUICK = dict(rl_prompts=64, rm_steps=40, rm_lr=1e-3, rl_batch=8, rl_steps=4, rl_lr=5e-4,
                    ppo_steps=4, ppo_lr=5e-4, bon_n=(4, 16))

# Per method: the algorithm, its scorer ("rm": the learned reward model), the KL settings
# (loss.beta) it runs at, and its options beyond the shared ones.
RECIPES = {
    "ppo": ("ppo", "rm", (0.2, 1.0), {"samples_per_prompt": 4, "epochs": 2, "value_lr": 1e-3}),
    "ppo_gt": ("ppo", "gold", (0.2, 1.0), {"samples_per_prompt": 4, "epochs": 2, "value_lr": 1e-3}),
    "grpo": ("grpo", "rm", (0.05, 0.2), {"samples_per_prompt": 8}),
    "remax": ("remax", "rm", (0.05, 0.2), {"samples_per_prompt": 4}),
    "rloo": ("rloo", "rm", (0.05, 0.2), {"samples_per_prompt": 8}),
}


class World(NamedTuple):
    """What every run shares: the SFT reference, the pairs, the sizes (``mmalign_text.demo``)."""

    out: Path
    tokenizer: object
    reward: object  # the text plugin, for scoring in compare
    reference: object
    sizes: dict
    seed: int


def write_prompts(world: World) -> Path:
    """Online prompts from the review language (a different stream than the pairs' prompts)."""
    rng = random.Random(world.seed + 777)
    rows = [{"prompt": p} for p in sentiment.prompts(rng, world.sizes["rl_prompts"])]
    return sentiment.write_jsonl(world.out / "data" / "prompts.jsonl", rows)


def train_reward_model(world: World, log=print) -> tuple[Path, float | None]:
    """A Bradley-Terry reward model started from the SFT model, on the demo's pairs. Returns its
    final directory and its held-out pairwise accuracy."""
    out, sizes = world.out, world.sizes
    cfg = {
        "output_dir": str(out / "runs" / "reward-model"), "seed": world.seed,
        "model": {"reward": "reward_model", "name_or_path": str(out / "sft" / "final")},
        "data": {"train": str(out / "data" / "pairs.jsonl"), "eval_size": 64},
        "loss": {"name": "bradley_terry", "beta": 1.0},
        "train": {"max_steps": sizes["rm_steps"], "batch_size": 32, "lr": sizes["rm_lr"],
                  "warmup_steps": min(10, sizes["rm_steps"] // 2), "lr_scheduler": "cosine",
                  "log_every": 10, "progress": False, "callbacks": []},
    }
    result = train(load_config(data=cfg), log=lambda *a: None)
    accuracy = next((r["eval/reward_accuracy"] for r in reversed(result.history)
                     if "eval/reward_accuracy" in r), None)
    log(f"  reward model: held-out pair accuracy {accuracy}")
    return result.final_dir, accuracy


def online_config(world: World, name: str, method: str, beta: float, rm_path: Path) -> dict:
    """The training config of one online run (``RECIPES[method]`` at KL coefficient ``beta``)."""
    algorithm, scorer, _, options = RECIPES[method]
    sizes, ppo = world.sizes, algorithm == "ppo"
    scorers = ({"reward_model": {"weight": 1.0, "path": str(rm_path)}} if scorer == "rm"
               else {"sentiment": 1.0})
    steps = sizes["ppo_steps"] if ppo else sizes["rl_steps"]
    return {
        "output_dir": str(world.out / "runs" / name), "seed": world.seed,
        "model": {"reward": "text", "name_or_path": str(world.out / "sft" / "final")},
        "data": {"train": str(world.out / "data" / "prompts.jsonl")},
        "algorithm": {"name": algorithm, "options": {
            **options, "max_new_tokens": sentiment.COMPLETION_WORDS + 1, "temperature": 1.0,
            "scorers": scorers}},
        "loss": {"beta": beta},
        # save_every 0: only the final model (PPO checkpoints must fall between rollouts)
        "train": {"max_steps": steps, "batch_size": sizes["rl_batch"], "lr": sizes["ppo_lr" if ppo else "rl_lr"],
                  "lr_scheduler": "constant", "log_every": 10, "save_every": 0, "progress": False,
                  "callbacks": [], "weight_decay": 0.0},
        "eval": {"evaluators": []},
    }


def point(world: World, name: str, method: str, beta, policy, started: float) -> dict:
    """One run's row of frontier.json: ``compare`` of the policy with the reference."""
    result = compare(world.reward, world.tokenizer, world.reference, policy, world.sizes, world.seed)
    return {"run": name, "method": method, "beta": beta, "gold_reward": result["gold_reward_policy"],
            "kl": result["kl_policy_reference"], "win_rate_vs_reference": result["win_rate_vs_reference"],
            "mean_length": result["mean_length_policy"], "seconds": round(time.time() - started, 1),
            "gold_reward_reference": result["gold_reward_reference"]}


def best_of_n_points(world: World, rm_path: Path, started: float) -> list[dict]:
    """Best-of-N from the reference for each N of ``sizes["bon_n"]`` on the held-out prompts of
    ``compare``; the smaller N use the first N of the largest N's draws. Win rate against the
    reference sample ``compare`` draws for the same prompt."""
    sizes, seed, tok = world.sizes, world.seed, world.tokenizer
    # the held-out prompts and reference samples of mmalign_text.demo.compare (same seeds)
    held_out = sentiment.prompts(random.Random(seed + 12345), sizes["eval_prompts"])
    reference = compare(world.reward, tok, world.reference, world.reference, sizes, seed)
    g_ref = reference["gold_reference_samples"]
    limit = sentiment.COMPLETION_WORDS + 1
    largest = best_of_n(world.reference, tok, held_out, n=max(sizes["bon_n"]), scorer=RewardModelScorer(rm_path),
                        max_new_tokens=limit, seed=seed + 4242)
    points = []
    for n in sizes["bon_n"]:
        best = [max(range(n), key=row["scores"].__getitem__) for row in largest]
        texts = [row["responses"][i] for row, i in zip(largest, best)]
        gold = [sentiment.gold_reward(t) for t in texts]
        wins = [1.0 if g > r else 0.5 if g == r else 0.0 for g, r in zip(gold, g_ref)]
        # generated tokens, as compare counts them: the words, then EOS unless cut at the limit
        lengths = [min(len(tok(t, add_special_tokens=False)["input_ids"]) + 1, limit) for t in texts]
        points.append({"run": f"best-of-{n}", "method": "best_of_n", "beta": None, "n": n,
                       "gold_reward": sum(gold) / len(gold), "kl": math.log(n) - (n - 1) / n,
                       "kl_kind": "analytic: log N - (N-1)/N",
                       "win_rate_vs_reference": sum(wins) / len(wins),
                       "mean_length": sum(lengths) / len(lengths), "seconds": round(time.time() - started, 1),
                       "gold_reward_reference": reference["gold_reward_reference"]})
    return points


def run_online(world: World, methods: list[str], log=print) -> tuple[list[dict], dict]:
    """The online methods and Best-of-N named in ``methods``: (frontier rows, extra facts)."""
    started = time.time()
    write_prompts(world)
    log(f"  reward model (bradley_terry from the SFT model, {world.sizes['rm_steps']} steps)")
    rm_path, rm_accuracy = train_reward_model(world, log)
    facts = {"reward_model_accuracy": rm_accuracy, "reward_model_seconds": round(time.time() - started, 1)}
    points = []
    for method in [m for m in methods if m in RECIPES]:
        for beta in RECIPES[method][2]:
            name, t0 = f"{method.replace('_', '-')}-beta{beta:g}", time.time()
            log(f"  {name}")
            final = train(load_config(data=online_config(world, name, method, beta, rm_path)),
                          log=lambda *a: None).final_dir
            points.append(point(world, name, method, beta, world.reward.load_reference(str(final)), t0))
    if "best_of_n" in methods:
        log(f"  best-of-N, N in {world.sizes['bon_n']}")
        points += best_of_n_points(world, rm_path, time.time())
    return points, facts
