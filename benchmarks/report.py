"""The results of a benchmark run: each workload's fields (the peer is its faster variant, mmalign
compared at the same precision) and the printed table. README.md describes every field."""

from __future__ import annotations

from benchmarks.flops import timed_flops_per_step
from benchmarks.workloads import Workload

PEER_SETTINGS = {"trl_default": ("bf16", "TRL defaults: bf16 autocast + gradient checkpointing"),
                 "trl_fp32": ("fp32", "TRL with bf16=False, gradient_checkpointing=False"),
                 "diffusers_dpo_fp32": ("fp32", "diffusers SDXL DPO step, fp32 (the script's default)"),
                 "diffusers_dpo_bf16": ("bf16", "diffusers SDXL DPO step, --mixed_precision bf16")}
PEER_SETTINGS_OF_KIND = {"ddpo": {"trl_fp32": ("fp32", "TRL 0.23.1 DDPOTrainer, mixed_precision 'no'"),
                                  "trl_bf16": ("bf16", "TRL 0.23.1 DDPOTrainer, mixed_precision 'bf16'")}}


def summarize_workload(w: Workload, runs: dict, peak: dict) -> dict:
    """The issue's fields for one workload. The peer is its faster variant; mmalign is compared at
    the same precision (bf16 autocast against TRL's default, fp32 against TRL's fp32)."""
    flops = timed_flops_per_step(w)
    variants = {}
    for key, r in runs.items():
        if "s_per_step" not in r:
            variants[key] = {"error": r.get("error"), "log_tail": r.get("log_tail")}
            continue
        v = {k: r[k] for k in ("s_per_step", "s_per_step_mean", "peak_rss_mb", "step_times", "warmup_step_times",
                               "encode_share", "generate_s", "score_s", "generate_times", "score_times", "work_per_step",
                               "peer_versions", "device", "unet_devices", "allow_tf32", "wall_s") if k in r}
        if "gpu_peak_allocated_mb" in r:
            v["gpu_peak_allocated_mb"] = r["gpu_peak_allocated_mb"]
        if key.startswith("mmalign"):
            precision = key.split("_")[1]
            v["flops_per_s"] = flops / r["s_per_step"]
            if "error" not in peak:
                v["share_of_peak"] = v["flops_per_s"] / peak[precision]
        variants[key] = v
    out = {"description": w.description, "timed_steps": w.steps, "warmup_steps": w.warmup,
           "mmalign_flops_per_step": flops, "variants": variants}
    peer_settings = PEER_SETTINGS_OF_KIND.get(w.kind, PEER_SETTINGS)
    peers = [k for k in peer_settings if "s_per_step" in variants.get(k, {})]
    if not peers:
        return out
    peer = min(peers, key=lambda k: variants[k]["s_per_step"])
    precision, settings = peer_settings[peer]
    mine = f"mmalign_{precision}"
    if "s_per_step" not in variants.get(mine, {}):
        return out
    m, p = variants[mine], variants[peer]
    out.update({
        "peer": f"{peer} ({settings})", "mmalign": mine, "precision": precision,
        "mmalign_s_per_step": m["s_per_step"], "peer_s_per_step": p["s_per_step"],
        "speedup": p["s_per_step"] / m["s_per_step"],
        "mmalign_peak_rss_mb": m["peak_rss_mb"], "peer_peak_rss_mb": p["peak_rss_mb"],
        "rss_ratio": m["peak_rss_mb"] / p["peak_rss_mb"],
        "mmalign_flops_share_of_peak": m.get("share_of_peak"),
    })
    return out


def table(results: dict) -> str:
    head = f"{'workload':<14} {'prec':<5} {'mmalign s':>9} {'peer s':>8} {'speedup':>7} " \
           f"{'mm RSS':>7} {'peer RSS':>8} {'RSS ratio':>9} {'% peak':>6}  peer"
    lines = [head, "-" * len(head)]
    for name, r in results["workloads"].items():
        if "speedup" not in r:
            errors = {k: v.get("error") for k, v in r["variants"].items() if "error" in v}
            lines.append(f"{name:<14} failed: {errors}")
            continue
        share = r["mmalign_flops_share_of_peak"]
        lines.append(f"{name:<14} {r['precision']:<5} {r['mmalign_s_per_step']:>9.3f} {r['peer_s_per_step']:>8.3f} "
                     f"{r['speedup']:>6.2f}x {r['mmalign_peak_rss_mb']:>7.0f} {r['peer_peak_rss_mb']:>8.0f} "
                     f"{r['rss_ratio']:>9.2f} {100 * share if share is not None else float('nan'):>5.1f}%  {r['peer']}")
    lines.append("")
    lines.append("all variants (median s/step, peak RSS MB):")
    for name, r in results["workloads"].items():
        parts = [f"{k} {v['s_per_step']:.3f}s/{v['peak_rss_mb']:.0f}MB" + _split(v) if "s_per_step" in v
                 else f"{k} failed" for k, v in r["variants"].items()]
        lines.append(f"  {name:<14} " + ", ".join(parts))
    return "\n".join(lines)


def _split(variant: dict) -> str:
    """An online run's median generation / scoring seconds per step ("" for offline runs)."""
    if variant.get("generate_s") is None:
        return ""
    return f" (generate {variant['generate_s']:.3f}s, score {variant['score_s']:.4f}s)"
