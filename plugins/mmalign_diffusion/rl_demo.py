"""``mmalign demo diffusion-rl``: online RL for a diffusion model in miniature, offline, through
mmalign's engine: DDPO, GRPO and online Diffusion-DPO side by side with offline Diffusion-DPO.

1. The offline demo (``mmalign demo diffusion``, :mod:`mmalign_diffusion.demo`) builds the world,
   the tiny SDXL pipeline and the SFT reference; its offline Diffusion-DPO policy is trained in
   step 2 with the online ones. ``offline=DIR`` reuses an offline demo that already ran.
2. From the SFT model, side by side on the usable cores (:mod:`mmalign_diffusion.demo_jobs`), on
   the world's 18 captions alone, with the gold scorer ``brightness`` as the reward: ``ddpo``
   (per-prompt normalised advantages, PPO-clip over denoising steps), ``grpo`` (group advantages
   over each caption's images) and ``online_dpo`` (two images per caption, the brighter chosen,
   the Diffusion-DPO loss on their denoising scores, at the offline demo's beta and lr).
   Sampling: DDIM, 20 steps at eta 1; DDPO and GRPO train every step of each image
   (``timestep_fraction`` 1: at 0.5 the policy moved too little in 30 steps), lr 1e-4 and no KL.
   Full fine-tuning, as offline.
3. Held-out seeds (the offline demo's captions and seeds, DDIM at eta 0): each policy's gold score
   against the reference's on the same seed (win rate); caption fidelity (the caption's colour, a
   shape present: :func:`mmalign_diffusion.world.caption_fidelity`), which catches the reward hack
   brightness invites (washed-out colours, shapes gone); and the KL to the reference, sampled:
   E_{x ~ pi}[sum_t log pi(x_{t-1} | x_t) - log pi_ref(x_{t-1} | x_t)], per latent dimension.
   ``report.json``, ``samples.png`` (reference and every policy on the same seeds) and
   ``report.png`` (reward per step).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from mmalign.config import load_config
from mmalign.engine import train
from mmalign_diffusion import demo as offline_demo, world
from mmalign_diffusion.demo_jobs import Job, run_jobs, usable_cores
from mmalign_diffusion.sampling import load_pipeline, sample, save_grid, win_rate

ONLINE = ("ddpo", "grpo", "online_dpo")
LONGEST_FIRST = ("ddpo", "grpo", "offline_dpo", "online_dpo")  # at the demo's sizes: 95, 95, 45 and 31 s
ALONE_THREADS = 2  # the autoencoder and SFT take 21 and 69 s with two threads, 31 and 80 with one
FULL = dict(rl_steps=30, prompts_per_step=4, samples_per_prompt=8, dpo_prompts_per_step=16, sample_steps=20,
            timestep_fraction=1.0,
            lr=1e-4, kl_beta=0.0, dpo_lr=1e-5, dpo_beta=2500.0, eval_samples=64, eval_steps=20, kl_samples=32)
QUICK = dict(rl_steps=2, prompts_per_step=2, samples_per_prompt=2, dpo_prompts_per_step=2, sample_steps=3,
             timestep_fraction=0.5,
             lr=1e-4, kl_beta=0.0, dpo_lr=1e-5, dpo_beta=2500.0, eval_samples=4, eval_steps=3, kl_samples=2)


def online_config(out: Path, algorithm: str, sizes: dict, seed: int) -> dict:
    """The ``mmalign train`` config of one online algorithm from the SFT model."""
    sampling = {"num_inference_steps": sizes["sample_steps"], "eta": 1.0}
    options = {"scorers": {"brightness": 1.0}, "sampling": sampling, "samples_per_prompt": sizes["samples_per_prompt"]}
    dpo = algorithm == "online_dpo"
    if dpo:  # a pair per caption, as many pairs a step as the offline demo's batch, its beta and lr
        options["samples_per_prompt"] = 2
    else:
        sampling["timestep_fraction"] = sizes["timestep_fraction"]
    if algorithm == "ddpo":
        options.update(stat_buffer=32, stat_min_count=16)
    return {
        "output_dir": str(out / algorithm), "seed": seed,
        "model": {"reward": "diffusion", "name_or_path": str(out / "offline" / "sft" / "final")},
        "data": {"train": str(out / "data" / "captions.jsonl")},
        "algorithm": {"name": algorithm, "options": options},
        "loss": {"beta": sizes["dpo_beta"] if dpo else sizes["kl_beta"]},
        "train": {"max_steps": sizes["rl_steps"], "lr": sizes["dpo_lr" if dpo else "lr"],
                  "batch_size": sizes["dpo_prompts_per_step" if dpo else "prompts_per_step"],
                  "warmup_steps": 0, "lr_scheduler": "constant", "log_every": 1, "callbacks": [],
                  "save_every": 0},
    }


def run_demo(out_dir: str | Path, *, quick: bool = False, seed: int = 0, workers: int | None = None,
             offline=None, algorithms: tuple[str, ...] = ONLINE, log=print, **overrides) -> dict:
    """Run the demo into ``out_dir`` (``offline``: a finished ``mmalign demo diffusion`` directory;
    ``algorithms``: which of ONLINE to train, e.g. DDPO alone for its outcome test; ``workers``:
    processes for the trainings from the SFT model, by default one per usable core). The steps
    that run alone (the reference, the evaluation) use ALONE_THREADS torch threads and each
    training one, whatever the machine: the numbers depend on thread counts (a second thread
    changes the SFT model's last bits), so they do not depend on ``workers`` or the cores."""
    workers = usable_cores() if workers is None else workers
    old_threads = torch.get_num_threads()
    torch.set_num_threads(ALONE_THREADS)
    try:
        return _run(Path(out_dir), dict(QUICK if quick else FULL, **overrides), seed, quick, offline,
                    tuple(algorithms), workers, log)
    finally:
        torch.set_num_threads(old_threads)


def _run(out: Path, sizes: dict, seed: int, quick: bool, offline, algorithms: tuple[str, ...], workers: int,
         log) -> dict:
    """The module docstring's steps. The trainings from the SFT model (offline Diffusion-DPO with
    the rest of the offline demo, and each online algorithm) are independent jobs, run side by
    side on ``workers`` processes (:mod:`mmalign_diffusion.demo_jobs`), longest first; each job
    then samples its model on the held-out seeds, and this process compares them."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if offline is None:
        offline_sizes = dict(offline_demo.QUICK if quick else offline_demo.FULL)
        log("[1/3] the offline demo: world, tiny SDXL pipeline, SFT reference (offline Diffusion-DPO below)")
        built = offline_demo.build_reference(out / "offline", offline_sizes, seed, log)
        jobs = [Job("offline_dpo", _train_offline, (out, offline_sizes, seed, built, sizes))]
    else:
        log(f"[1/3] reusing the offline demo in {offline}")
        (out / "offline").symlink_to(Path(offline).resolve(), target_is_directory=True)
        jobs = [Job("offline_dpo", _evaluate_offline, (out, sizes, seed))]
    captions = [f"a {c} {s}" for c in world.COLOURS for s in world.SHAPES]
    world.write_jsonl(out / "data" / "captions.jsonl", [{"prompt": c} for c in captions])
    t_reference = time.time() - t0
    jobs += [Job(name, _train_online, (out, name, sizes, seed)) for name in algorithms]
    jobs.sort(key=lambda job: LONGEST_FIRST.index(job.name))
    log(f"[2/3] from the SFT model: {', '.join(j.name for j in jobs)} ({sizes['rl_steps']} steps each online), "
        f"each model then sampled on the held-out seeds")
    results = run_jobs(jobs, min(workers, len(jobs)), out / "logs", log)
    log("[3/3] held-out seeds: gold win rate, caption fidelity and KL to the reference")
    report = _report(out, sizes, seed, {**results["offline_dpo"]["evaluations"],
                                        **{name: results[name]["evaluation"] for name in algorithms}})
    report.update(sizes=sizes, seconds_reference=round(t_reference, 1),
                  **{f"seconds_{name}": results[name]["seconds"] for name in algorithms},
                  seconds_total=round(time.time() - t0, 1))
    if "seconds" in results["offline_dpo"]:
        report["seconds_offline_dpo"] = results["offline_dpo"]["seconds"]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plot(out, {name: results[name]["history"] for name in algorithms})
    log(_table(report))
    return report


def _train_online(out: Path, name: str, sizes: dict, seed: int, log=print) -> dict:
    """A job: one online training, then its model on the held-out seeds."""
    start = time.time()
    history = train(load_config(data=online_config(out, name, sizes, seed)), log=log).history
    seconds = round(time.time() - start, 1)
    return {"history": history, "seconds": seconds,
            "evaluation": _evaluate_model(out, out / name / "final", sizes, seed)}


def _train_offline(out: Path, offline_sizes: dict, seed: int, built: dict, sizes: dict, log=print) -> dict:
    """A job: the rest of the offline demo (Diffusion-DPO, its report), then the held-out seeds."""
    report = offline_demo.train_policy_and_report(out / "offline", offline_sizes, seed, built, log)
    return {"seconds": report["seconds_dpo"], **_evaluate_offline(out, sizes, seed)}


def _evaluate_offline(out: Path, sizes: dict, seed: int, log=print) -> dict:
    """The reference's and the offline Diffusion-DPO policy's held-out evaluations."""
    return {"evaluations": {"reference": _evaluate_model(out, out / "offline" / "sft" / "final", sizes, seed, kl=False),
                            "offline_dpo": _evaluate_model(out, out / "offline" / "dpo" / "final", sizes, seed)}}


def _held_out(sizes: dict, seed: int) -> tuple[list[str], list[int]]:
    """The offline demo's held-out captions and seeds."""
    rng = random.Random(seed + 12345)
    captions = [world.caption(rng) for _ in range(sizes["eval_samples"])]
    return captions, list(range(10_000, 10_000 + len(captions)))


def _evaluate_model(out: Path, model_dir: Path, sizes: dict, seed: int, kl: bool = True) -> dict:
    """One model's samples of the held-out captions and seeds (DDIM at eta 0): their gold scores,
    the caption fidelity, the first 12 images (the grid) and the sampled KL to the reference."""
    captions, seeds = _held_out(sizes, seed)
    images = sample(load_pipeline(model_dir), captions, seeds, steps=sizes["eval_steps"])
    return {"gold": [world.gold_score(im) for im in images],
            "caption_fidelity": sum(world.caption_fidelity(im, c) for im, c in zip(images, captions)) / len(images),
            "grid": images[:12], "kl_to_reference": _sampled_kl(out, model_dir, sizes, seed) if kl else None}


def _report(out: Path, sizes: dict, seed: int, evaluations: dict) -> dict:
    """Every model against the reference on the same seeds (module docstring); ``samples.png``."""
    captions, _ = _held_out(sizes, seed)
    reference, models = evaluations["reference"]["gold"], {}
    for name, evaluation in evaluations.items():
        gold = evaluation["gold"]
        models[name] = {"gold_score": sum(gold) / len(gold), "caption_fidelity": evaluation["caption_fidelity"]}
        if name != "reference":
            models[name].update(win_rate_vs_reference=win_rate(gold, reference),
                                kl_to_reference=evaluation["kl_to_reference"])
    save_grid(out / "samples.png", {name: e["grid"] for name, e in evaluations.items()}, captions,
              {name: e["gold"][:12] for name, e in evaluations.items()})
    return {"models": models, "held_out_samples": len(captions),
            "gold_score": "mean brightness of the image in [0, 1]",
            "caption_fidelity": "share of samples whose saturated pixels (>= 5% of the image) are nearest "
                                "the caption's colour",
            "kl_to_reference": "E_{x~pi} sum over DDIM steps (eta 1) of log pi - log pi_ref, per latent dim"}


@torch.no_grad()
def _sampled_kl(out: Path, policy_dir: Path, sizes: dict, seed: int) -> float:
    """E_{x ~ pi}[sum_t log pi(x_{t-1} | x_t, c) - log pi_ref(x_{t-1} | x_t, c)] over ``kl_samples``
    trajectories (DDIM at eta 1, the training sampler) of held-out captions."""
    from mmalign_diffusion.online import sample as sample_trajectories, trajectory_log_probs
    from mmalign_diffusion.reward import DiffusionReward

    cfg = load_config(data={"model": {"reward": "diffusion", "name_or_path": str(out / "offline" / "sft" / "final")}})
    reward = DiffusionReward(cfg.model, cfg.data)
    policy, reference = reward.load_trained(policy_dir).eval(), reward.load_reference(str(cfg.model.name_or_path)).eval()
    rng = random.Random(seed + 999)
    contexts = [{"prompt": world.caption(rng)} for _ in range(sizes["kl_samples"])]
    drawn = sample_trajectories(reward, policy, contexts, 1, torch.Generator().manual_seed(seed + 5),
                                steps=sizes["sample_steps"], eta=1.0)
    under_reference, _ = trajectory_log_probs(reward, reference, drawn.trajectory, 1)
    return float((drawn.trajectory.log_probs - under_reference).sum(1).mean())


def _plot(out: Path, histories: dict) -> None:
    from mmalign_metrics.plotting import plot_panels

    curves = {name: ([r["step"] for r in rows], [r["rewards/mean"] for r in rows]) for name, rows in histories.items()}
    plot_panels(out / "report.png", {"reward (brightness) of the samples": curves},
                title="mmalign demo diffusion-rl: DDPO, GRPO, online Diffusion-DPO (tiny SDXL)",
                axes={"reward (brightness) of the samples": ("optimizer step", "mean brightness (0-1)")})


def _table(report: dict) -> str:
    rows = [f"{'':<14}{'gold':>8}{'win':>8}{'fidelity':>10}{'KL':>10}"]
    for name, m in report["models"].items():
        win, kl = m.get("win_rate_vs_reference"), m.get("kl_to_reference")
        rows.append(f"{name:<14}{m['gold_score']:>8.3f}{'' if win is None else f'{win:.3f}':>8}"
                    f"{m['caption_fidelity']:>10.3f}{'' if kl is None else f'{kl:.4f}':>10}")
    return "\n".join(["", *rows, f"time: {report['seconds_total']} s"])
