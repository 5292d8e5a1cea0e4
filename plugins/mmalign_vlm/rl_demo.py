"""``mmalign demo vlm-rl``: hallucination reduction by online RL (GRPO with a verifier), in miniature
and offline, through mmalign's engine and VLM plugin.

1. SFT, as ``mmalign demo vlm``: a tiny LLaVA learns to caption the shapes world from captions with
   a co-occurrence bias (a red object "brings" a green cross), so it hallucinates. ``sft_from=DIR``
   reuses the SFT model of a finished ``mmalign demo vlm`` run with the same seed and SFT sizes
   (the same data, so the same model).
2. GRPO from the SFT model on images alone: 8 captions sampled per image, each scored by the
   ``shapes_hallucination`` verifier (recall minus the caption's own CHAIR_i, -1 for a caption
   outside the world's grammar; it reads the record's ``objects`` column), k3 KL to the SFT model.
3. Greedy captions of held-out images from the SFT model and the GRPO policy: CHAIR, recall and
   the share of well-formed captions.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from mmalign.config import load_config
from mmalign.engine import train
from mmalign_metrics.plotting import bar_chart, plot_panels
from mmalign_text.sentiment import write_jsonl
from mmalign_vlm import shapes
from mmalign_vlm.demo import _caption_scores, _configs, _records
from mmalign_vlm.hallucination import Vocabulary, hallucination_reward

FULL = dict(sft_images=4000, sft_steps=1000, rl_images=2000, rl_steps=60, eval_images=200)
QUICK = dict(sft_images=256, sft_steps=30, rl_images=64, rl_steps=3, eval_images=32)


def shapes_hallucination(prompts: list[str], responses: list[str], *, objects: list) -> list[float]:
    """The shapes world's verifier: :func:`hallucination_reward` of each caption against the
    image's objects (the record's ``objects`` column), and -1 for a caption the world's grammar
    does not parse ("a C S( and a C S)*")."""
    rewards = hallucination_reward(responses, objects, Vocabulary(shapes.vocabulary()))
    return [r if shapes.parse(c) is not None else -1.0 for r, c in zip(rewards, responses)]


def shapes_hallucination_scorer(**options):
    """Scorer factory for ``mmalign_register_scorers`` (no options)."""
    return shapes_hallucination


def grpo_config(out: Path, sizes: dict, seed: int) -> dict:
    return {
        "output_dir": str(out / "grpo"), "seed": seed,
        "model": {"reward": "vlm", "name_or_path": str(out / "sft" / "final")},
        "data": {"train": str(out / "data" / "prompts.jsonl")},
        "algorithm": {"name": "grpo", "options": {
            "samples_per_prompt": 8, "max_new_tokens": 24, "temperature": 1.0,
            "scorers": {"shapes_hallucination": 1.0}}},
        "loss": {"beta": 0.02},
        "train": {"max_steps": sizes["rl_steps"], "batch_size": 8, "lr": 1e-4, "warmup_steps": 0,
                  "lr_scheduler": "cosine", "log_every": 5, "weight_decay": 0.0},
    }


def run_demo(out_dir: str | Path, *, quick: bool = False, seed: int = 0, sft_from=None, log=print,
             **sizes_override: int) -> dict:
    import torch

    sizes = dict(QUICK if quick else FULL, **sizes_override)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t0 = time.time()
    shapes.build_processor(out / "processor")
    write_jsonl(out / "data" / "sft.jsonl", _records(out, rng, sizes["sft_images"], "sft", "sft"))
    prompts = [{k: r[k] for k in ("image", "prompt", "objects")}
               for r in _records(out, rng, sizes["rl_images"], "rl", "pairs")]
    write_jsonl(out / "data" / "prompts.jsonl", prompts)
    write_jsonl(out / "data" / "eval.jsonl", _records(out, rng, sizes["eval_images"], "eval", "pairs"))
    sft_cfg, _ = _configs(out, dict(sizes, pair_images=0, dpo_steps=0), seed, 0.1, 1.0)

    if sft_from is None:
        log(f"[1/3] SFT of a tiny LLaVA on {sizes['sft_images']} images with co-occurrence-biased captions")
        train(load_config(data=sft_cfg), log=log)
    else:
        log(f"[1/3] reusing the SFT model of the VLM demo in {sft_from}")
        _check_same_sft(Path(sft_from), sizes, seed)
        (out / "sft").symlink_to((Path(sft_from) / "sft").resolve(), target_is_directory=True)
    t_sft = time.time() - t0
    log(f"[2/3] GRPO from the SFT model: {sizes['rl_steps']} steps of 8 images x 8 captions, "
        f"hallucination verifier")
    cfg = load_config(data=grpo_config(out, sizes, seed))
    result = train(cfg, log=log)
    t_rl = time.time() - t0 - t_sft

    log(f"[3/3] greedy captions of {sizes['eval_images']} held-out images, CHAIR")
    report = _evaluate(out, cfg, result.final_dir)
    report.update({"sizes": sizes, "seconds_sft": round(t_sft, 1), "seconds_grpo": round(t_rl, 1),
                   "seconds_total": round(time.time() - t0, 1),
                   "grpo_reward_curve": [(r["step"], r["rewards/mean"]) for r in result.history if "rewards/mean" in r],
                   "grpo_kl_curve": [(r["step"], r["kl"]) for r in result.history if "kl" in r]})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plot(out, report)
    log(_table(report))
    return report


def _check_same_sft(demo_dir: Path, sizes: dict, seed: int) -> None:
    """The VLM demo's SFT model is this demo's only if it was trained on the same records."""
    report = json.loads((demo_dir / "report.json").read_text())
    theirs = {k: report.get("sizes", {}).get(k) for k in ("sft_images", "sft_steps")} | {"seed": report.get("seed")}
    ours = {k: sizes[k] for k in ("sft_images", "sft_steps")} | {"seed": seed}
    if theirs != ours:
        raise ValueError(f"sft_from={demo_dir}: that VLM demo ran with {theirs}, this one needs {ours}; "
                         f"run `mmalign demo vlm` with the same seed and sizes, or leave sft_from out")


def _evaluate(out: Path, cfg, final_dir: Path) -> dict:
    from mmalign.plugins import registry
    from mmalign_formats import read_jsonl

    reward = registry().get("rewards", "vlm")(cfg.model, cfg.data)
    examples = [reward.prepare(r, paired=True) for r in read_jsonl(out / "data" / "eval.jsonl")]
    ref_scores, ref_caps = _caption_scores(reward, reward.load_trained(out / "sft" / "final"), examples)
    pol_scores, pol_caps = _caption_scores(reward, reward.load_trained(final_dir), examples)
    report = {f"{k}_{who}": v for who, s in (("reference", ref_scores), ("policy", pol_scores))
              for k, v in s.items() if k != "captions"}
    report["eval_images"] = len(examples)
    report["examples"] = [{"objects": e.fields["objects"], "reference": r, "policy": p}
                          for e, r, p in list(zip(examples, ref_caps, pol_caps))[:6]]
    return report


def _plot(out: Path, report: dict) -> None:
    rewards, kl = report["grpo_reward_curve"], report["grpo_kl_curve"]
    reward_panel, kl_panel = "GRPO: verifier reward of sampled captions", "GRPO: KL to the SFT model"
    plot_panels(out / "report.png", {
        reward_panel: {"mean": ([s for s, _ in rewards], [v for _, v in rewards])},
        kl_panel: {"kl": ([s for s, _ in kl], [v for _, v in kl])},
    }, title="mmalign demo vlm-rl: GRPO with a hallucination verifier (CHAIR: chair.png)",
        axes={reward_panel: ("GRPO optimizer step", "recall - CHAIR_i per caption (-1 .. 1)"),
              kl_panel: ("GRPO optimizer step", "nats per token")})
    bar_chart(out / "chair.png", "held-out greedy captions: CHAIR_i and recall, SFT vs GRPO",
              {"CHAIR_i SFT": report["chair_i_reference"], "CHAIR_i GRPO": report["chair_i_policy"],
               "recall SFT": report["recall_reference"], "recall GRPO": report["recall_policy"]})


def _table(r: dict) -> str:
    rows = [("CHAIR_i", "chair_i"), ("CHAIR_s", "chair_s"), ("recall", "recall"), ("well-formed", "wellformed")]
    lines = ["", f"{'held-out greedy':<16}{'SFT':>10}{'GRPO':>10}"]
    lines += [f"{name:<16}{r[key + '_reference']:>10.3f}{r[key + '_policy']:>10.3f}" for name, key in rows]
    lines.append(f"time: {r['seconds_total']} s (SFT {r['seconds_sft']} s, GRPO {r['seconds_grpo']} s)")
    return "\n".join(lines)
