"""The ``ddpo`` workload's peer: TRL 0.23.1's ``DDPOTrainer`` with ``DefaultDDPOStableDiffusionPipeline``
(LoRA: rank 4, alpha 4, gaussian init on to_q/to_k/to_v/to_out.0, its only LoRA setting), run by the
python of TRL's own environment (benchmarks/ddpo.py: ``peer_python``), where mmalign is not
installed: only benchmarks.ddpo, .timing and .workloads are imported from this repository.

    <peer env>/bin/python -m benchmarks.ddpo_peer VARIANT SPEC.json OUT.json

One ``DDPOTrainer.step`` (an "epoch" in TRL's words) is one step of mmalign's: it samples
``sample_batch_size`` = 8 images in one batch, scores them, computes the per-prompt advantages and
trains one inner epoch of one batch of 8, accumulating gradients over the 5 trained timesteps into
one optimizer step. The prompt function hands out the workload's prompts in mmalign's order, each
``samples`` times in a row, so both sides sample the same prompts in the same groups.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.ddpo import ETA, GUIDANCE, OPTIMIZER, PPO, SAMPLE_STEPS, TIMESTEP_FRACTION, UNetCounter, check_device, \
    check_work, mean_brightness
from benchmarks.timing import child_device, median_split, memory, summarize, sync, use_all_cores
from benchmarks.workloads import Workload, peer_records


def ddpo_config(w: Workload, variant: str, out_dir: str):
    """DDPOConfig: one sampling batch of all the step's images, trained as one batch, one optimizer
    step per epoch; no checkpoints (TRL saves the state every epoch by default), no trackers."""
    from trl import DDPOConfig

    if variant not in ("fp32", "bf16"):
        raise ValueError(f"unknown DDPO variant {variant!r} (fp32 or bf16)")
    images = w.pairs * w.samples
    return DDPOConfig(
        num_epochs=w.total_steps, save_freq=10**9, seed=0, log_with=None,
        mixed_precision="no" if variant == "fp32" else "bf16",
        project_kwargs={"project_dir": out_dir, "logging_dir": str(Path(out_dir) / "logs")},
        sample_num_steps=SAMPLE_STEPS, sample_eta=ETA, sample_guidance_scale=GUIDANCE, sample_batch_size=images,
        sample_num_batches_per_epoch=1, train_batch_size=images, train_gradient_accumulation_steps=1,
        train_num_inner_epochs=1, train_cfg=True, train_timestep_fraction=TIMESTEP_FRACTION,
        train_learning_rate=OPTIMIZER["lr"], train_adam_weight_decay=OPTIMIZER["weight_decay"],
        train_max_grad_norm=OPTIMIZER["max_grad_norm"], train_clip_range=PPO["clip_range"],
        train_adv_clip_max=PPO["adv_clip_max"], per_prompt_stat_tracking=True,
        per_prompt_stat_tracking_buffer_size=PPO["stat_buffer"],
        per_prompt_stat_tracking_min_count=PPO["stat_min_count"],
        async_reward_computation=False, allow_tf32=False)  # fp32 is fp32 on a GPU, as mmalign's (no TF32)


def run_trl_ddpo(w: Workload, variant: str, out_dir: str, gpu: bool = False) -> dict:
    """TRL's DDPOTrainer on ``w``; ``gpu``: fail unless every UNet call ran on CUDA (accelerate puts
    the pipeline on the GPU whenever torch sees one)."""
    with UNetCounter() as counter:  # before the pipeline is built: every UNet call is counted
        result = _run(w, variant, out_dir, counter)
    result["unet_devices"] = check_device(counter, gpu, "TRL DDPOTrainer")
    return result


def _run(w: Workload, variant: str, out_dir: str, counter: UNetCounter) -> dict:
    from accelerate import PartialState
    from trl import DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    prompts = iter([r["prompt"] for r in peer_records(w) for _ in range(w.samples)])
    spent = {"generate_s": 0.0, "score_s": 0.0}

    def reward(images, prompts, metadata):  # [N, 3, H, W] in [0, 1]
        start = time.perf_counter()
        counter.scored(len(images), images.shape[-1])
        values = mean_brightness(images.float().cpu())
        spent["score_s"] += time.perf_counter() - start
        return values, {}

    # the pipeline warns through accelerate's logger that the model folder has no LoRA weights (it
    # adds fresh ones), and that logger refuses to run before accelerate's state exists
    PartialState()
    pipeline = DefaultDDPOStableDiffusionPipeline(w.model_dir, use_lora=True)
    trainer = DDPOTrainer(ddpo_config(w, variant, out_dir), reward, lambda: (next(prompts), {}), pipeline)
    generate = trainer._generate_samples

    def timed_generate(*args, **kwargs):  # sampling: text encoding, DDIM with log-probs, VAE decode
        start = time.perf_counter()
        out = generate(*args, **kwargs)
        spent["generate_s"] += time.perf_counter() - start
        return out

    trainer._generate_samples = timed_generate
    stamps: list[float] = []
    split: dict[str, list[float]] = {"generate_s": [], "score_s": []}
    global_step = 0
    for epoch in range(w.total_steps):  # DDPOTrainer.train's loop, timed per epoch
        global_step = trainer.step(epoch, global_step)
        sync()
        stamps.append(time.perf_counter())
        counter.close_step()
        for k in split:
            split[k].append(spent[k])
            spent[k] = 0.0
    check_work(w, counter.steps, "TRL DDPOTrainer")
    timed = {k: v[w.warmup:] for k, v in split.items()}
    return {**summarize(stamps, w.warmup), **median_split(timed), "work_per_step": counter.steps[-1], **memory()}


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("trl", "diffusers", "transformers", "peft", "accelerate", "torch")}


def main(argv: list[str]) -> None:
    variant, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    threads = use_all_cores()
    device, gpu = child_device(spec), bool(spec.get("gpu"))  # a peer env with a CPU-only torch stops here
    started = time.perf_counter()
    result = run_trl_ddpo(Workload.from_json(spec["workload"]), variant, spec["out_dir"], gpu=gpu)
    result.update(threads=threads, device=device, peer_versions=versions(), allow_tf32=False,
                  wall_s=time.perf_counter() - started)
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
