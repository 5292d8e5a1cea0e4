"""The reward-KL frontier of the DPO paper (figure 2, left) on the text demo: DPO at several betas
against the paper's baselines, Preferred-FT (SFT on the chosen completions) and Unlikelihood, all
from the same SFT reference and the same pairs. ``mmalign sweep --out DIR`` writes
``DIR/frontier.json`` (gold reward and KL per run) and ``DIR/frontier.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor

from mmalign.config import load_config
from mmalign.engine import train
from mmalign.losses import LossSpec
from mmalign_metrics.plotting import plot_panels
from mmalign_text.demo import FULL, QUICK, _dpo_config, compare, prepare_world


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


def _run(out: Path, name: str, sizes: dict, seed: int, loss: dict, lr: float, log) -> Path:
    cfg = _dpo_config(out, sizes["dpo_steps"], seed, loss.get("beta", 0.1), lr)
    cfg["output_dir"] = str(out / "runs" / name)
    cfg["loss"] = loss
    cfg["train"]["progress"] = False
    log(f"  {name}")
    return train(load_config(data=cfg), log=lambda *a: None).final_dir


def run_sweep(out_dir: str | Path, *, betas=(0.1, 0.5, 2.0, 8.0), quick: bool = False, seed: int = 0,
              log=print, **sizes_override) -> dict:
    sizes = dict(QUICK if quick else FULL, **sizes_override)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.time()
    tokenizer, reward, reference, n_pairs = prepare_world(out, sizes, seed, log)
    lr = sizes["dpo_lr"]
    runs = [(f"dpo-beta{b:g}", "dpo", b, {"name": "sigmoid", "beta": b}, lr) for b in betas]
    # The baselines move the policy slowly at DPO's lr; 10x lets them reach comparable KL.
    runs += [("preferred-ft", "preferred_ft", None, {"name": "sft"}, 10 * lr),
             ("unlikelihood", "unlikelihood", None, {"name": "unlikelihood", "options": {"alpha": 1.0}}, 10 * lr)]
    log(f"[3/4] {len(runs)} runs from the same SFT reference and {n_pairs} pairs")
    points = []
    for name, method, beta, loss, run_lr in runs:
        final = _run(out, name, sizes, seed, loss, run_lr, log)
        result = compare(reward, tokenizer, reference, reward.load_reference(str(final)), sizes, seed)
        points.append({"run": name, "method": method, "beta": beta,
                       "gold_reward": result["gold_reward_policy"], "kl": result["kl_policy_reference"],
                       "win_rate_vs_reference": result["win_rate_vs_reference"],
                       "mean_length": result["mean_length_policy"]})
    frontier = {"gold_reward_reference": result["gold_reward_reference"], "pairs": n_pairs,
                "dpo_steps": sizes["dpo_steps"], "lr": lr, "baseline_lr": 10 * lr, "runs": points,
                "seconds_total": round(time.time() - t0, 1)}
    (out / "frontier.json").write_text(json.dumps(frontier, indent=1))
    series = {}
    for method in ("dpo", "preferred_ft", "unlikelihood"):
        pts = sorted((p["kl"], p["gold_reward"]) for p in points if p["method"] == method)
        series[method] = ([p[0] for p in pts], [p[1] for p in pts])
    plot_panels(out / "frontier.png", {"gold reward vs KL(policy || reference)": series},
                title="mmalign sweep: reward-KL frontier (DPO paper, figure 2 left, in miniature)")
    log("\n" + "\n".join(f"{p['run']:<16} gold {p['gold_reward']:7.3f}   KL {p['kl']:7.3f}" for p in points))
    return frontier


def add_sweep_arguments(parser) -> None:
    """``mmalign sweep``'s arguments (registered through mmalign_register_commands)."""
    parser.add_argument("--out", required=True)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.5, 2.0, 8.0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="move what an earlier run left in --out aside and start anew")


def sweep_command(args) -> None:
    """``mmalign sweep --out DIR``: the frontier in an empty (or --overwrite) DIR, on one thread."""
    from mmalign.cli import fresh_out, one_thread

    fresh_out(args.out, args.overwrite)
    with one_thread():
        run_sweep(Path(args.out), betas=tuple(args.betas), quick=args.quick)
