"""``mmalign demo vlm``: hallucination reduction (POVID / HA-DPO style) in miniature, offline,
through mmalign's engine and VLM plugin.

1. SFT: a tiny LLaVA (CLIP tower + Llama) learns to caption a synthetic shapes world from captions
   with a co-occurrence bias, so it hallucinates like a real VLM (``mmalign_vlm.shapes``).
2. Pairs on new images: chosen = the correct caption, rejected = the same caption with one absent
   object inserted.
3. DPO with an NLL term on the chosen caption (as in RPO; plain DPO tends to collapse captions).
4. Greedy captions of held-out images from reference and policy, scored with CHAIR, recall and the
   share of well-formed captions.
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
from mmalign_vlm.hallucination import Vocabulary, chair

FULL = dict(sft_images=4000, sft_steps=1000, pair_images=2000, dpo_steps=200, eval_images=200)
QUICK = dict(sft_images=256, sft_steps=30, pair_images=128, dpo_steps=8, eval_images=32)


def _records(out: Path, rng: random.Random, n: int, prefix: str, kind: str) -> list[dict]:
    scenes = [shapes.scene(rng) for _ in range(n)]
    names = shapes.write_images(out / "data" / "images", scenes, prefix)
    rows = []
    for name, quadrants in zip(names, scenes):
        objects = shapes.objects_of(quadrants)
        row = {"image": f"images/{name}", "prompt": shapes.PROMPT, "objects": objects}
        if kind == "sft":
            row["completion"] = shapes.biased_caption(objects, rng)
        else:
            row["chosen"] = shapes.caption(objects)
            row["rejected"] = shapes.with_hallucination(objects, rng)
        rows.append(row)
    return rows


def _configs(out: Path, sizes: dict, seed: int, beta: float, sft_weight: float) -> tuple[dict, dict]:
    sft = {
        "output_dir": str(out / "sft"), "seed": seed,
        "model": {"reward": "vlm", "tiny": shapes.TINY_LLAVA, "tokenizer": str(out / "processor")},
        "data": {"train": str(out / "data" / "sft.jsonl")},
        "loss": {"name": "sft"},
        "train": {"max_steps": sizes["sft_steps"], "batch_size": 64, "lr": 1e-3, "warmup_steps": 50,
                  "lr_scheduler": "cosine", "log_every": 25},
    }
    dpo = {
        "output_dir": str(out / "dpo"), "seed": seed,
        "model": {"reward": "vlm", "name_or_path": str(out / "sft" / "final")},
        "data": {"train": str(out / "data" / "pairs.jsonl"), "eval": str(out / "data" / "eval.jsonl")},
        "loss": {"name": "sigmoid", "beta": beta, "sft_weight": sft_weight},
        "train": {"max_steps": sizes["dpo_steps"], "batch_size": 16, "lr": 5e-5, "warmup_steps": 10,
                  "lr_scheduler": "constant", "log_every": 10, "eval_every": 100},
        "eval": {"batch_size": 64},
    }
    return sft, dpo


def _caption_scores(reward, model, examples) -> tuple[dict, list[str]]:
    from mmalign_vlm.generation import generate

    captions = generate(reward, model, examples, max_new_tokens=24)
    scores = chair(captions, [e.fields["objects"] for e in examples], Vocabulary(shapes.vocabulary()))
    scores["wellformed"] = sum(shapes.parse(c) is not None for c in captions) / len(captions)
    return scores, captions


def run_demo(out_dir: str | Path, *, quick: bool = False, seed: int = 0, beta: float = 0.1,
             sft_weight: float = 1.0, log=print, **sizes_override: int) -> dict:
    import torch

    sizes = dict(QUICK if quick else FULL, **sizes_override)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t0 = time.time()
    shapes.build_processor(out / "processor")
    write_jsonl(out / "data" / "sft.jsonl", _records(out, rng, sizes["sft_images"], "sft", "sft"))
    write_jsonl(out / "data" / "pairs.jsonl", _records(out, rng, sizes["pair_images"], "pair", "pairs"))
    write_jsonl(out / "data" / "eval.jsonl", _records(out, rng, sizes["eval_images"], "eval", "pairs"))
    sft_cfg, dpo_cfg = _configs(out, sizes, seed, beta, sft_weight)

    log(f"[1/3] SFT of a tiny LLaVA on {sizes['sft_images']} images with co-occurrence-biased captions")
    train(load_config(data=sft_cfg), log=log)
    t_sft = time.time() - t0
    log(f"[2/3] DPO (beta={beta}, NLL weight {sft_weight}) on {sizes['pair_images']} hallucination pairs")
    cfg = load_config(data=dpo_cfg)
    result = train(cfg, log=log)
    t_dpo = time.time() - t0 - t_sft

    log(f"[3/3] greedy captions of {sizes['eval_images']} held-out images, CHAIR")
    from mmalign_formats import read_jsonl
    from mmalign.plugins import registry

    reward = registry().get("rewards", "vlm")(cfg.model, cfg.data)
    examples = [reward.prepare(r, paired=True) for r in read_jsonl(out / "data" / "eval.jsonl")]
    ref_scores, ref_caps = _caption_scores(reward, reward.load_trained(out / "sft" / "final"), examples)
    pol_scores, pol_caps = _caption_scores(reward, reward.load_trained(result.final_dir), examples)
    report = {f"{k}_{who}": v for who, s in (("reference", ref_scores), ("policy", pol_scores))
              for k, v in s.items() if k != "captions"}
    report.update({
        "eval_images": len(examples), "beta": beta, "sft_weight": sft_weight, "seed": seed, "sizes": sizes,
        "dpo_eval_reward_accuracy": result.history[-1].get("eval/reward_accuracy") if result.history else None,
        "seconds_sft": round(t_sft, 1), "seconds_dpo": round(t_dpo, 1),
        "seconds_total": round(time.time() - t0, 1),
        "examples": [{"objects": e.fields["objects"], "reference": r, "policy": p}
                     for e, r, p in list(zip(examples, ref_caps, pol_caps))[:6]],
    })
    (out / "report.json").write_text(json.dumps(report, indent=1))
    steps = [r["step"] for r in result.history]
    plot_panels(out / "report.png", {
        "DPO loss": {"train": (steps, [r["loss"] for r in result.history])},
        "reward accuracy": {"train": (steps, [r.get("rewards/accuracies", 0) for r in result.history])},
    }, title="mmalign demo vlm: DPO against hallucination (CHAIR: chair.png)",
        axes={"DPO loss": ("optimizer step", "DPO loss (+ NLL on the chosen caption)"),
              "reward accuracy": ("optimizer step", "share of pairs with r(chosen) > r(rejected)")})
    bar_chart(out / "chair.png", "held-out greedy captions: CHAIR_i and recall, reference vs policy",
              {"CHAIR_i reference": report["chair_i_reference"], "CHAIR_i policy": report["chair_i_policy"],
               "recall reference": report["recall_reference"], "recall policy": report["recall_policy"]})
    log(_table(report))
    return report


def _table(r: dict) -> str:
    rows = [("CHAIR_i", "chair_i"), ("CHAIR_s", "chair_s"), ("recall", "recall"), ("well-formed", "wellformed")]
    lines = ["", f"{'':<14}{'reference':>12}{'policy':>12}"]
    lines += [f"{label:<14}{r[key + '_reference']:>12.3f}{r[key + '_policy']:>12.3f}" for label, key in rows]
    lines.append(f"time: {r['seconds_total']} s (SFT {r['seconds_sft']} s, DPO {r['seconds_dpo']} s)")
    return "\n".join(lines)
