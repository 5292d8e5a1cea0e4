"""``mmalign demo text``: the controlled-sentiment experiment of the DPO paper (section 6.1), in
miniature and offline, run entirely through mmalign's engine and text plugin.

1. SFT: a tiny Llama learns a synthetic review language (``mmalign_text.sentiment``).
2. Pairs: two completions per prompt sampled from the SFT model, labelled by the gold reward
   (#positive - #negative words); ties dropped.
3. DPO on those pairs, with the SFT model as the reference.
4. Held-out prompts: reference and policy sampled with the same seeds; gold reward of both, the
   policy's win rate, and the sampled KL(policy || reference) = E_{y~policy}[log pi(y|x) - log ref(y|x)].
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from mmalign.config import load_config
from mmalign.engine import train
from mmalign_metrics.plotting import plot_panels
from mmalign_text import sentiment
from mmalign_text.sampling import completion_text, sample

TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                  tie_word_embeddings=True)

FULL = dict(sft_reviews=20000, sft_steps=600, pair_prompts=1000, dpo_steps=100, eval_prompts=200,
            dpo_lr=1e-4)
QUICK = dict(sft_reviews=2000, sft_steps=60, pair_prompts=200, dpo_steps=10, eval_prompts=40,
             dpo_lr=5e-4)


def _sft_config(out: Path, steps: int, seed: int) -> dict:
    return {
        "output_dir": str(out / "sft"), "seed": seed,
        "model": {"reward": "text", "tiny": TINY_LLAMA, "tokenizer": str(out / "tokenizer")},
        "data": {"train": str(out / "data" / "sft.jsonl")},
        "loss": {"name": "sft"},
        "train": {"max_steps": steps, "batch_size": 64, "lr": 3e-3, "warmup_steps": 30,
                  "lr_scheduler": "cosine", "log_every": 20, "weight_decay": 0.0},
    }


def _dpo_config(out: Path, steps: int, seed: int, beta: float, lr: float) -> dict:
    return {
        "output_dir": str(out / "dpo"), "seed": seed,
        "model": {"reward": "text", "name_or_path": str(out / "sft" / "final")},
        "data": {"train": str(out / "data" / "pairs.jsonl"), "eval_size": 64},
        "loss": {"name": "sigmoid", "beta": beta},
        "train": {"max_steps": steps, "batch_size": 32, "lr": lr, "warmup_steps": 10,
                  "lr_scheduler": "constant", "log_every": 10, "eval_every": 40},
    }


def _gold(tokenizer, examples) -> list[float]:
    return [sentiment.gold_reward(completion_text(tokenizer, e)) for e in examples]


def _sequence_logps(reward, model, examples, batch_size: int = 256) -> torch.Tensor:
    scores = []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            scores.append(reward.score(model, reward.collate(examples[i:i + batch_size])).chosen)
    return torch.cat(scores)


def prepare_world(out: Path, sizes: dict, seed: int, log=print):
    """Steps 1-2: the tokenizer, SFT of the reference on reviews, and gold-labelled pairs sampled
    from it. Returns (tokenizer, reference model, number of pairs)."""
    from mmalign.plugins import registry

    rng = random.Random(seed)
    tokenizer = sentiment.build_tokenizer(out / "tokenizer")
    sentiment.write_jsonl(out / "data" / "sft.jsonl", [
        dict(zip(("prompt", "completion"), sentiment.review(rng))) for _ in range(sizes["sft_reviews"])])
    log(f"[1/4] SFT of a tiny Llama on {sizes['sft_reviews']} synthetic reviews")
    train(load_config(data=_sft_config(out, sizes["sft_steps"], seed)), log=log)

    log(f"[2/4] sampling 2 completions for {sizes['pair_prompts']} prompts; gold-labelled pairs")
    cfg = load_config(data=_dpo_config(out, sizes["dpo_steps"], seed, 0.1, 1e-4))
    reward = registry().get("rewards", "text")(cfg.model, cfg.data)
    sft_model = reward.load_reference(str(out / "sft" / "final"))
    pair_prompts = sentiment.prompts(rng, sizes["pair_prompts"])
    n_new = sentiment.COMPLETION_WORDS + 1
    a = sample(sft_model, tokenizer, pair_prompts, max_new_tokens=n_new, seed=seed + 1)
    b = sample(sft_model, tokenizer, pair_prompts, max_new_tokens=n_new, seed=seed + 2)
    pairs = []
    for prompt, ea, eb in zip(pair_prompts, a, b):
        ta, tb = completion_text(tokenizer, ea), completion_text(tokenizer, eb)
        ga, gb = sentiment.gold_reward(ta), sentiment.gold_reward(tb)
        if ga != gb and ta.strip() and tb.strip():
            chosen, rejected = (ta, tb) if ga > gb else (tb, ta)  # a space joins prompt and completion
            pairs.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    sentiment.write_jsonl(out / "data" / "pairs.jsonl", pairs)
    log(f"      {len(pairs)} pairs kept ({len(pair_prompts) - len(pairs)} ties or empty dropped)")
    return tokenizer, reward, sft_model, len(pairs)


def compare(reward, tokenizer, reference, policy, sizes: dict, seed: int) -> dict:
    """Step 4: reference and policy complete held-out prompts with the same sampling seeds."""
    n_new = sentiment.COMPLETION_WORDS + 1
    held_out = sentiment.prompts(random.Random(seed + 12345), sizes["eval_prompts"])
    ref_samples = sample(reference, tokenizer, held_out, max_new_tokens=n_new, seed=seed + 99)
    pol_samples = sample(policy, tokenizer, held_out, max_new_tokens=n_new, seed=seed + 99)
    g_ref, g_pol = _gold(tokenizer, ref_samples), _gold(tokenizer, pol_samples)
    wins = [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(g_pol, g_ref)]
    kl = (_sequence_logps(reward, policy, pol_samples) - _sequence_logps(reward, reference, pol_samples)).mean()
    return {
        "gold_reward_reference": sum(g_ref) / len(g_ref),
        "gold_reward_policy": sum(g_pol) / len(g_pol),
        "win_rate_vs_reference": sum(wins) / len(wins),
        "kl_policy_reference": float(kl),
        # length exploitation is DPO's best-known failure (Park et al. 2024): watch it
        "mean_length_reference": sum(len(e.chosen_ids) for e in ref_samples) / len(ref_samples),
        "mean_length_policy": sum(len(e.chosen_ids) for e in pol_samples) / len(pol_samples),
        "eval_prompts": len(held_out),
        "gold_reference_samples": g_ref, "gold_policy_samples": g_pol,
        "examples": [{"prompt": p, "reference": completion_text(tokenizer, r),
                      "policy": completion_text(tokenizer, q)}
                     for p, r, q in list(zip(held_out, ref_samples, pol_samples))[:5]],
    }


def run_demo(out_dir: str | Path, *, quick: bool = False, seed: int = 0, beta: float = 0.5,
             log=print, **sizes_override: int) -> dict:
    sizes = dict(QUICK if quick else FULL, **sizes_override)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.time()
    tokenizer, reward, sft_model, n_pairs = prepare_world(out, sizes, seed, log)
    t_sft = time.time() - t0

    log(f"[3/4] DPO (beta={beta}) on the pairs, reference = the SFT model")
    result = train(load_config(data=_dpo_config(out, sizes["dpo_steps"], seed, beta, sizes["dpo_lr"])), log=log)
    t_dpo = time.time() - t0 - t_sft

    log(f"[4/4] sampling {sizes['eval_prompts']} held-out prompts from reference and policy, same seeds")
    policy = reward.load_reference(str(result.final_dir))
    report = compare(reward, tokenizer, sft_model, policy, sizes, seed)
    g_ref, g_pol = report.pop("gold_reference_samples"), report.pop("gold_policy_samples")
    last = result.history[-1] if result.history else {}
    report.update({
        "pairs": n_pairs, "beta": beta, "dpo_eval_reward_accuracy": last.get("eval/reward_accuracy"),
        "seconds_sft": round(t_sft, 1), "seconds_dpo": round(t_dpo, 1),
        "seconds_total": round(time.time() - t0, 1),
    })
    report["examples"] = report.pop("examples")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plot(out, result.history, g_ref, g_pol)
    log(_table(report))
    return report


def _plot(out: Path, history: list[dict], g_ref: list[float], g_pol: list[float]) -> None:
    steps = [r["step"] for r in history]
    values = sorted(set(g_ref) | set(g_pol))
    hist = {name: (values, [sum(g == v for g in gs) / len(gs) for v in values])
            for name, gs in (("reference", g_ref), ("policy", g_pol))}
    plot_panels(out / "report.png", {
        "DPO loss": {"train": (steps, [r["loss"] for r in history])},
        "reward accuracy": {"train": (steps, [r.get("rewards/accuracies", 0) for r in history])},
        "gold reward distribution": hist,
    }, title="mmalign demo text: controlled sentiment (DPO, section 6.1 in miniature)",
        axes={"DPO loss": ("optimizer step", "sigmoid DPO loss"),
              "reward accuracy": ("optimizer step", "share of pairs with r(chosen) > r(rejected)"),
              "gold reward distribution": ("gold reward of a sample", "share of held-out samples")})


def _table(r: dict) -> str:
    return "\n".join([
        "",
        f"{'':<24}{'reference':>12}{'policy':>12}",
        f"{'gold reward (mean)':<24}{r['gold_reward_reference']:>12.3f}{r['gold_reward_policy']:>12.3f}",
        f"{'win rate vs reference':<24}{'':>12}{r['win_rate_vs_reference']:>12.3f}",
        f"{'KL(policy || ref), nats':<24}{'':>12}{r['kl_policy_reference']:>12.3f}",
        f"time: {r['seconds_total']} s (SFT {r['seconds_sft']} s, DPO {r['seconds_dpo']} s)",
    ])
