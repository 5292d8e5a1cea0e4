"""``mmalign demo diffusion-rl``: online RL for a diffusion model in miniature, offline, through
mmalign's engine: DDPO, GRPO and online Diffusion-DPO side by side with offline Diffusion-DPO.

1. The offline demo (``mmalign demo diffusion``, :mod:`mmalign_diffusion.demo`) builds the world,
   the tiny SDXL pipeline and the SFT reference; its offline Diffusion-DPO policy is trained in
   step 2 with the online ones. ``offline=DIR`` reuses an offline demo that already ran.
2. From the SFT model, side by side on the usable cores (:mod:`mmalign_diffusion.demo_jobs`), on
   the world's 18 captions alone, with the gold scorer ``brightness`` as the reward: ``ddpo``
   (per-prompt normalised advantages, PPO-clip over denoising steps), ``grpo`` (group advantages over each caption's images) and ``online_dpo`` (two images per
   caption, the brighter chosen, the Diffusion-DPO loss on their denoising scores, at the offline
   demo's beta and lr). Sampling: DDIM, 20 steps at eta 1; DDPO and GRPO train every step of each
   image (``timestep_fraction`` 1: at 0.5 the policy moved too little in 30 steps), lr 1e-4 and no
   KL. Full fine-tuning, as offline.
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
LONGEST_FIRST = ("ddpo", "grpo", "offline_dpo", "online_dpo")  # at the demo's sizes: 83, 81, 47 and 30 s
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
    processes for the trainings from the SFT model, by default one per usable core). Every step
    runs on one torch thread, so the numbers do not depend on ``workers`` or the machine's cores
    (two threads change the SFT model's last bits)."""
    workers = usable_cores() if workers is None else workers
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(Path(out_dir), dict(QUICK if quick else FULL, **overrides), seed, quick, offline,
                    tuple(algorithms), workers, log)
    finally:
        torch.set_num_threads(old_threads)


def _run(out: Path, sizes: dict, seed: int, quick: bool, offline, algorithms: tuple[str, ...], workers: int,
         log) -> dict:
    """The module docstring's steps. The trainings from the SFT model (offline Diffusion-DPO with
    the rest of the offline demo, and each online algorithm) are independent jobs, run side by
    side on ``workers`` processes (:mod:`mmalign_diffusion.demo_jobs`), longest first."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = []
    if offline is None:
        offline_sizes = dict(offline_demo.QUICK if quick else offline_demo.FULL)
        log("[1/3] the offline demo: world, tiny SDXL pipeline, SFT reference (offline Diffusion-DPO below)")
        built = offline_demo.build_reference(out / "offline", offline_sizes, seed, log)
        jobs.append(Job("offline_dpo", offline_demo.train_policy_and_report, (out / "offline", offline_sizes, seed, built)))
    else:
        log(f"[1/3] reusing the offline demo in {offline}")
        (out / "offline").symlink_to(Path(offline).resolve(), target_is_directory=True)
    captions = [f"a {c} {s}" for c in world.COLOURS for s in world.SHAPES]
    world.write_jsonl(out / "data" / "captions.jsonl", [{"prompt": c} for c in captions])
    t_reference = time.time() - t0
    jobs += [Job(name, _train_online, (online_config(out, name, sizes, seed),)) for name in algorithms]
    jobs.sort(key=lambda job: LONGEST_FIRST.index(job.name))
    log(f"[2/3] from the SFT model: {', '.join(j.name for j in jobs)} ({sizes['rl_steps']} steps each online)")
    results = run_jobs(jobs, min(workers, len(jobs)), out / "logs", log)
    histories = {name: results[name][0] for name in algorithms}
    log("[3/3] held-out seeds: gold win rate, caption fidelity and KL to the reference")
    report = _evaluate(out, sizes, seed, algorithms)
    report.update(sizes=sizes, seconds_reference=round(t_reference, 1),
                  **{f"seconds_{name}": results[name][1] for name in algorithms}, seconds_total=round(time.time() - t0, 1))
    if "offline_dpo" in results:
        report["seconds_offline_dpo"] = results["offline_dpo"]["seconds_dpo"]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plot(out, histories)
    log(_table(report))
    return report


def _train_online(config: dict, log=print) -> tuple[list[dict], float]:
    """(the metrics history, seconds) of one online training (a job: a top-level function)."""
    start = time.time()
    history = train(load_config(data=config), log=log).history
    return history, round(time.time() - start, 1)


def _evaluate(out: Path, sizes: dict, seed: int, algorithms: tuple[str, ...]) -> dict:
    """Every model's samples on the offline demo's held-out captions and seeds (module docstring)."""
    rng = random.Random(seed + 12345)  # the offline demo's held-out captions and seeds
    captions = [world.caption(rng) for _ in range(sizes["eval_samples"])]
    seeds = list(range(10_000, 10_000 + len(captions)))
    dirs = {"reference": out / "offline" / "sft" / "final", "offline_dpo": out / "offline" / "dpo" / "final",
            **{name: out / name / "final" for name in algorithms}}
    images = {name: sample(load_pipeline(d), captions, seeds, steps=sizes["eval_steps"]) for name, d in dirs.items()}
    gold = {name: [world.gold_score(im) for im in ims] for name, ims in images.items()}
    models = {}
    for name, ims in images.items():
        models[name] = {"gold_score": sum(gold[name]) / len(ims),
                        "caption_fidelity": sum(world.caption_fidelity(im, c) for im, c in zip(ims, captions)) / len(ims)}
        if name != "reference":
            models[name]["win_rate_vs_reference"] = win_rate(gold[name], gold["reference"])
            models[name]["kl_to_reference"] = _sampled_kl(out, dirs[name], sizes, seed)
    short = {name: ims[:12] for name, ims in images.items()}
    save_grid(out / "samples.png", short, captions, {n: g[:12] for n, g in gold.items()})
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
