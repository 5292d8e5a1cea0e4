"""The reward-KL frontier of the DPO paper (figure 2, left) on the text demo, every method from the
same SFT reference: offline, DPO at several betas and the paper's baselines Preferred-FT (SFT on
the chosen completions) and Unlikelihood, on the same gold-labelled pairs; online and Best-of-N
(``mmalign_text.sweep_online``), PPO, GRPO, ReMax and RLOO with a reward model trained on those
pairs, PPO-GT with the gold reward, and Best-of-N with the reward model. ``mmalign sweep --out DIR``
writes ``DIR/frontier.json`` (gold reward, KL, win rate, length, seconds per run) and
``DIR/frontier.png``; ``--methods`` selects.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor

from mmalign.config import load_config
from mmalign.engine import train
from mmalign.errors import ConfigError
from mmalign.losses import LossSpec
from mmalign_metrics.plotting import plot_panels
from mmalign_text.demo import FULL, QUICK, _dpo_config, prepare_world
from mmalign_text.sweep_online import (ONLINE_FULL, ONLINE_METHODS, ONLINE_QUICK, World, point,
                                       run_online)


def unlikelihood(pc: Tensor, pr: Tensor, rc: Tensor | None, rr: Tensor | None, *, beta: float,
                 lengths: tuple[Tensor, Tensor], alpha: float = 1.0) -> Tensor:
    """Unlikelihood baseline of the DPO paper (Welleck et al. 2020), on length-averaged
    log-probabilities a = s / |y| (sequence-level, since the engine's scores are sums):

        L = -a_w - alpha * log(1 - exp(a_l))

    reference-free; ``beta`` is unused. Shapes: [B] -> [B].
    """
    avg_w = pc / lengths[0].clamp(min=1)
    avg_l = (pr / lengths[1].clamp(min=1)).clamp(max=-1e-6)
    return -avg_w - alpha * torch.log(-torch.expm1(avg_l))


UNLIKELIHOOD = LossSpec("unlikelihood", unlikelihood, needs_reference=False, lengths=True,
                        score_kinds=("log_prob",),
                        summary="Unlikelihood baseline (Welleck et al. 2020; DPO paper section 6)")


# --quick: the demo's quick world is too small for DPO to pull away from the baselines (10 DPO
# steps); this one does in ~25 s of the offline part (seeds 0, 1, 2 checked).
QUICK_SWEEP = dict(QUICK, sft_reviews=4000, sft_steps=150, pair_prompts=400, dpo_steps=30, eval_prompts=100,
                   dpo_lr=2e-4)
OFFLINE_METHODS = ("dpo", "preferred_ft", "unlikelihood")
METHODS = OFFLINE_METHODS + ONLINE_METHODS
LABELS = {"dpo": "DPO", "preferred_ft": "Preferred-FT", "unlikelihood": "Unlikelihood", "ppo": "PPO (RM)",
          "ppo_gt": "PPO-GT (gold)", "grpo": "GRPO (RM)", "remax": "ReMax (RM)", "rloo": "RLOO (RM)",
          "best_of_n": "Best-of-N (RM)"}


def _run(out: Path, name: str, sizes: dict, seed: int, loss: dict, lr: float, log) -> Path:
    cfg = _dpo_config(out, sizes["dpo_steps"], seed, loss.get("beta", 0.1), lr)
    cfg["output_dir"] = str(out / "runs" / name)
    cfg["loss"] = loss
    cfg["train"]["progress"] = False
    log(f"  {name}")
    return train(load_config(data=cfg), log=lambda *a: None).final_dir


def offline_points(world: World, betas, methods, log=print) -> list[dict]:
    """DPO at each beta and the paper's offline baselines, on the pairs, from the SFT reference."""
    lr = world.sizes["dpo_lr"]
    runs = [(f"dpo-beta{b:g}", "dpo", b, {"name": "sigmoid", "beta": b}, lr) for b in betas]
    # The baselines move the policy slowly at DPO's lr; 10x lets them reach comparable KL.
    runs += [("preferred-ft", "preferred_ft", None, {"name": "sft"}, 10 * lr),
             ("unlikelihood", "unlikelihood", None, {"name": "unlikelihood", "options": {"alpha": 1.0}}, 10 * lr)]
    points = []
    for name, method, beta, loss, run_lr in [r for r in runs if r[1] in methods]:
        started = time.time()
        final = _run(world.out, name, world.sizes, world.seed, loss, run_lr, log)
        points.append(point(world, name, method, beta, world.reward.load_reference(str(final)), started))
    return points


def run_sweep(out_dir: str | Path, *, betas=(0.1, 0.5, 2.0, 8.0), quick: bool = False, seed: int = 0,
              methods=METHODS, log=print, **sizes_override) -> dict:
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)}; choose from {','.join(METHODS)}.")
    sizes = dict(QUICK_SWEEP, **ONLINE_QUICK) if quick else dict(FULL, **ONLINE_FULL)
    sizes.update(sizes_override)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.time()
    tokenizer, reward, reference, n_pairs = prepare_world(out, sizes, seed, log)
    world = World(out, tokenizer, reward, reference, sizes, seed)
    seconds = {"world": time.time() - t0}
    log(f"[3/4] offline: {', '.join(m for m in methods if m in OFFLINE_METHODS) or 'none'}, "
        f"from the SFT reference and {n_pairs} pairs")
    points = offline_points(world, betas, methods, log)
    seconds["offline"] = time.time() - t0 - seconds["world"]
    log(f"[4/4] online and Best-of-N: {', '.join(m for m in methods if m in ONLINE_METHODS) or 'none'}")
    online, facts = run_online(world, methods, log) if set(methods) & set(ONLINE_METHODS) else ([], {})
    points += online
    seconds["online"] = time.time() - t0 - seconds["world"] - seconds["offline"]
    seconds = {k: round(v, 1) for k, v in seconds.items()}
    reference_gold = points[0].pop("gold_reward_reference") if points else None
    for p in points:
        p.pop("gold_reward_reference", None)
    frontier = {"gold_reward_reference": reference_gold, "pairs": n_pairs, "dpo_steps": sizes["dpo_steps"],
                "lr": sizes["dpo_lr"], "baseline_lr": 10 * sizes["dpo_lr"], **facts,
                "best_of_n_kl": "analytic: log N - (N-1)/N", "sizes": sizes, "runs": points,
                "seconds": seconds, "seconds_total": round(time.time() - t0, 1)}
    (out / "frontier.json").write_text(json.dumps(frontier, indent=1))
    plot_frontier(out / "frontier.png", points)
    log(table(frontier))
    return frontier


def plot_frontier(path: Path, points: list[dict]) -> None:
    """One panel, gold reward against KL, a labelled series per method (points sorted by KL)."""
    series = {}
    for method in dict.fromkeys(p["method"] for p in points):
        pts = sorted((p["kl"], p["gold_reward"]) for p in points if p["method"] == method)
        series[LABELS[method]] = ([x for x, _ in pts], [y for _, y in pts])
    panel = "gold reward vs KL(policy || SFT reference)"
    plot_panels(path, {panel: series},
                title="mmalign sweep: reward-KL frontier (DPO paper, figure 2 left, in miniature)",
                axes={panel: ("KL(policy || reference), nats (Best-of-N: log N - (N-1)/N)",
                              "mean held-out gold reward (#positive - #negative words)")})


def table(frontier: dict) -> str:
    rows = [f"{'run':<20}{'gold':>8}{'KL':>8}{'win':>7}{'length':>8}{'seconds':>9}"]
    rows += [f"{p['run']:<20}{p['gold_reward']:>8.3f}{p['kl']:>8.3f}{p['win_rate_vs_reference']:>7.3f}"
             f"{p['mean_length']:>8.2f}{p['seconds']:>9.1f}" for p in frontier["runs"]]
    rows.append(f"reference gold {frontier['gold_reward_reference']}; time {frontier['seconds_total']} s "
                f"({frontier['seconds']})")
    return "\n" + "\n".join(rows)


def add_sweep_arguments(parser) -> None:
    """``mmalign sweep``'s arguments (registered through mmalign_register_commands)."""
    parser.add_argument("--out", required=True)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.5, 2.0, 8.0], help="DPO's betas")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="move what an earlier run left in --out aside and start anew")


def sweep_command(args) -> None:
    """``mmalign sweep --out DIR``: the frontier in an empty (or --overwrite) DIR, on one thread."""
    from mmalign_inspect.commands import one_thread
    from mmalign_runs.output_dir import fresh_out

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ConfigError(f"--methods: unknown or none ({', '.join(unknown)}); give a comma-separated "
                          f"list from {','.join(METHODS)}.")
    fresh_out(args.out, args.overwrite)
    with one_thread():
        run_sweep(Path(args.out), betas=tuple(args.betas), quick=args.quick, methods=methods)
