"""``mmalign demo diffusion``: Diffusion-DPO in miniature, offline, through mmalign's engine.

1. A synthetic image world (``mmalign_diffusion.world``): one coloured shape on a grey background,
   captioned "a red circle"; the gold score of an image is its mean brightness.
2. A tiny SDXL-architecture pipeline (UNet with ``addition_embed_type="text_time"``, two tiny CLIP
   text encoders, a tiny VAE) built from configs. The VAE is first trained briefly as an autoencoder
   on the world's images: a random VAE would decode every latent into noise. The UNet works in its
   latent space (32x32 images -> 4x8x8 latents).
3. SFT (``loss: sft``, the plain denoising loss) of the UNet on captioned images: the reference.
4. Diffusion-DPO on pairs of images of the same caption, the brighter one chosen.
5. Held-out pairs: implicit-reward accuracy of the reference (0.5 by construction: ties) and the
   policy. Held-out captions: images sampled from reference and policy with the same starting noise
   (DDIM, 20 steps), their gold scores, the policy's win rate, and a side-by-side grid PNG.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from mmalign.config import load_config
from mmalign.engine import train
from mmalign.evaluate import EvalContext
from mmalign_metrics.plotting import plot_panels
from mmalign_reference.strategies import FrozenCopy
from mmalign_diffusion import world
from mmalign_diffusion.autoencoder import train_autoencoder
from mmalign_diffusion.components import build_tiny, make_pipeline
from mmalign_diffusion.evaluate import pair_margins
from mmalign_diffusion.records import ImageRef, View, load_pixels
from mmalign_diffusion.sampling import load_pipeline, sample, save_grid, win_rate

TINY = {"architecture": "sdxl", "resolution": 32, "seed": 0}
FULL = dict(sft_images=2000, vae_steps=150, sft_steps=600, train_pairs=1000, eval_pairs=128,
            dpo_steps=120, samples=64, sample_steps=20, beta=2500.0, dpo_lr=1e-5, eval_draws=8)
QUICK = dict(sft_images=32, vae_steps=4, sft_steps=2, train_pairs=16, eval_pairs=4,
             dpo_steps=2, samples=2, sample_steps=3, beta=2500.0, dpo_lr=1e-5, eval_draws=1)


def _sft_config(out: Path, sizes: dict, seed: int) -> dict:
    return {
        "output_dir": str(out / "sft"), "seed": seed,
        "model": {"reward": "diffusion", "name_or_path": str(out / "base")},
        "data": {"train": str(out / "data" / "sft.jsonl")},
        "loss": {"name": "sft"},
        "train": {"max_steps": sizes["sft_steps"], "batch_size": min(32, sizes["sft_images"]), "lr": 2e-3,
                  "warmup_steps": 30, "lr_scheduler": "cosine", "log_every": 25, "callbacks": []},
    }


def _dpo_config(out: Path, sizes: dict, seed: int) -> dict:
    return {
        "output_dir": str(out / "dpo"), "seed": seed,
        "model": {"reward": "diffusion", "name_or_path": str(out / "sft" / "final"),
                  "options": {"eval_draws": sizes["eval_draws"]}},
        "data": {"train": str(out / "data" / "pairs.jsonl"), "eval": str(out / "data" / "eval.jsonl")},
        "loss": {"name": "sigmoid", "beta": sizes["beta"]},
        "train": {"max_steps": sizes["dpo_steps"], "batch_size": min(16, sizes["train_pairs"]), "lr": sizes["dpo_lr"],
                  "warmup_steps": 10, "lr_scheduler": "constant", "log_every": 10, "callbacks": []},
        "eval": {"evaluators": ["diffusion_accuracy"], "batch_size": 64},
    }


def _base_pipeline(out: Path, sizes: dict, seed: int, log) -> None:
    """The tiny pipeline with its VAE trained as an autoencoder, saved to ``out/base``."""
    comps, unet = build_tiny(dict(TINY))
    rows = [json.loads(line) for line in (out / "data" / "sft.jsonl").read_text().splitlines()]
    pixels = torch.stack([load_pixels(ImageRef(out / "data" / r["image"], None, (32, 32), r["image"]),
                                      32, View(0, 0, False)) for r in rows])
    scale = train_autoencoder(comps.vae, pixels, steps=sizes["vae_steps"], seed=seed, log=log)
    log(f"      latent scaling factor {scale:.3f}")
    make_pipeline(comps, unet).save_pretrained(out / "base")


def _implicit_accuracy(reward, policy, reference, examples, beta: float, draws: int, seed: int) -> float:
    from mmalign.losses import LossSpec
    from mmalign_losses import sigmoid

    ctx = EvalContext(policy, FrozenCopy(reference, reward), reward, examples, LossSpec("sigmoid", sigmoid),
                      beta, 64, seed)
    margins = pair_margins(ctx, draws)
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())


def run_demo(out_dir: str | Path, *, quick: bool = False, seed: int = 0, threads: int = 1, log=print,
             **overrides) -> dict:
    """Run the demo into ``out_dir``. ``threads``: torch CPU threads; models this small gain little
    from more, and on a shared machine a second thread waiting for a busy core costs more."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(Path(out_dir), dict(QUICK if quick else FULL, **overrides), seed, log)
    finally:
        torch.set_num_threads(old_threads)


def _run(out: Path, sizes: dict, seed: int, log) -> dict:
    seconds = build_reference(out, sizes, seed, log)
    return train_policy_and_report(out, sizes, seed, seconds, log)


def build_reference(out: Path, sizes: dict, seed: int, log) -> dict:
    """Steps 1 and 2: the world's data, the base pipeline and the SFT reference in ``out``; their
    seconds ({"autoencoder": ..., "sft": ...})."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.time()
    log(f"[1/5] synthetic world: {sizes['sft_images']} captioned images, {sizes['train_pairs']} + "
        f"{sizes['eval_pairs']} brightness-labelled pairs; tiny VAE trained as an autoencoder")
    data = out / "data"
    world.write_sft_data(data, sizes["sft_images"], seed)
    world.write_pair_data(data, "pairs", sizes["train_pairs"], seed + 1)
    world.write_pair_data(data, "eval", sizes["eval_pairs"], seed + 2)
    _base_pipeline(out, sizes, seed, log)
    t_vae = time.time() - t0

    log(f"[2/5] SFT of the tiny SDXL UNet ({sizes['sft_steps']} steps)")
    train(load_config(data=_sft_config(out, sizes, seed)), log=log)
    return {"autoencoder": t_vae, "sft": time.time() - t0 - t_vae}


def train_policy_and_report(out: Path, sizes: dict, seed: int, seconds: dict, log=print) -> dict:
    """Steps 3 to 5 from the reference :func:`build_reference` left in ``out``: Diffusion-DPO, the
    held-out evaluation, ``report.json`` and the PNGs; the report."""
    t0 = time.time()
    log(f"[3/5] Diffusion-DPO (beta={sizes['beta']}) on the pairs, reference = the SFT model")
    dpo_cfg = load_config(data=_dpo_config(out, sizes, seed))
    result = train(dpo_cfg, log=log)
    t_dpo = time.time() - t0

    log(f"[4/5] implicit-reward accuracy on {sizes['eval_pairs']} held-out pairs "
        f"({sizes['eval_draws']} noise draws each)")
    held_out, acc_ref, acc_pol = _held_out_accuracy(out, dpo_cfg, result.final_dir, sizes, seed)

    log(f"[5/5] sampling {sizes['samples']} held-out captions from reference and policy, same seeds")
    captions, g_ref, g_pol = _sample_both(out, result.final_dir, sizes, seed)

    report = {
        "implicit_accuracy_reference": acc_ref,
        "implicit_accuracy_policy": acc_pol,
        "gold_score_reference": sum(g_ref) / len(g_ref),
        "gold_score_policy": sum(g_pol) / len(g_pol),
        "win_rate_vs_reference": win_rate(g_pol, g_ref),
        "gold_score": "mean brightness of the image in [0, 1]",
        "latent_space": "tiny VAE (trained as an autoencoder first): 3x32x32 images -> 4x8x8 latents",
        "beta": sizes["beta"], "pairs": sizes["train_pairs"], "eval_pairs": len(held_out),
        "eval_draws": sizes["eval_draws"], "samples": len(captions),
        "sampler": f"DDIM, {sizes['sample_steps']} steps, guidance scale 1",
        "seconds_autoencoder": round(seconds["autoencoder"], 1), "seconds_sft": round(seconds["sft"], 1),
        "seconds_dpo": round(t_dpo, 1),
        "seconds_total": round(seconds["autoencoder"] + seconds["sft"] + time.time() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plot(out, result.history, g_ref, g_pol)
    log(_table(report))
    return report


def _held_out_accuracy(out: Path, dpo_cfg, final: Path, sizes: dict, seed: int) -> tuple[list, float, float]:
    """(held-out examples, implicit-reward accuracy of the reference, of the policy)."""
    from mmalign_data.preparing import prepare_examples
    from mmalign_data.reading import read_records
    from mmalign.plugins import registry

    reward = registry().get("rewards", "diffusion")(dpo_cfg.model, dpo_cfg.data)
    held_out, _ = prepare_examples(reward, read_records(dpo_cfg.data.eval, "auto", "data.eval"),
                                   paired=True, strict=False, path=dpo_cfg.data.eval)
    reference = reward.load_reference(str(out / "sft" / "final")).eval()
    policy = reward.load_trained(final).eval()
    args = (held_out, sizes["beta"], sizes["eval_draws"], seed + 7)
    return held_out, _implicit_accuracy(reward, reference, reference, *args), _implicit_accuracy(
        reward, policy, reference, *args)


def _sample_both(out: Path, final: Path, sizes: dict, seed: int) -> tuple[list[str], list[float], list[float]]:
    """Held-out captions sampled from the reference and the policy on the same seeds: (captions,
    gold scores of the reference's images, of the policy's); the grid goes to samples.png."""
    rng = random.Random(seed + 12345)
    captions = [world.caption(rng) for _ in range(sizes["samples"])]
    seeds = list(range(10_000, 10_000 + sizes["samples"]))
    steps = sizes["sample_steps"]
    ref_images = sample(load_pipeline(out / "sft" / "final"), captions, seeds, steps=steps)
    pol_images = sample(load_pipeline(final), captions, seeds, steps=steps)
    g_ref = [world.gold_score(im) for im in ref_images]
    g_pol = [world.gold_score(im) for im in pol_images]
    save_grid(out / "samples.png", {"reference": ref_images[:12], "policy": pol_images[:12]}, captions,
              {"reference": g_ref, "policy": g_pol})
    return captions, g_ref, g_pol


def _plot(out: Path, history: list[dict], g_ref: list[float], g_pol: list[float]) -> None:
    steps = [r["step"] for r in history]
    order = list(range(len(g_ref)))
    plot_panels(out / "report.png", {
        "DPO loss": {"train": (steps, [r["loss"] for r in history])},
        "implicit reward accuracy": {"train (1 draw)": (steps, [r.get("rewards/accuracies", 0) for r in history])},
        "gold score per seed": {"reference": (order, g_ref), "policy": (order, g_pol)},
    }, title="mmalign demo diffusion: Diffusion-DPO towards brighter images (tiny SDXL)",
        axes={"DPO loss": ("optimizer step", "Diffusion-DPO loss"),
              "implicit reward accuracy": ("optimizer step", "share of pairs ranked right"),
              "gold score per seed": ("held-out caption and seed", "mean brightness of the sample (0-1)")})


def _table(r: dict) -> str:
    return "\n".join([
        "",
        f"{'':<28}{'reference':>12}{'policy':>12}",
        f"{'implicit accuracy (held-out)':<28}{r['implicit_accuracy_reference']:>12.3f}{r['implicit_accuracy_policy']:>12.3f}",
        f"{'gold score (brightness)':<28}{r['gold_score_reference']:>12.3f}{r['gold_score_policy']:>12.3f}",
        f"{'win rate vs reference':<28}{'':>12}{r['win_rate_vs_reference']:>12.3f}",
        f"time: {r['seconds_total']} s (autoencoder {r['seconds_autoencoder']} s, SFT {r['seconds_sft']} s, "
        f"DPO {r['seconds_dpo']} s)",
    ])
