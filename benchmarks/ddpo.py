"""The ``ddpo`` workload: mmalign's DDPO (plugins/mmalign_rl/ddpo.py on the diffusion plugin) against
TRL 0.23.1's ``DDPOTrainer`` (the last TRL that had DDPO), on a tiny SD 1.5 pipeline.

Pipeline (built once, seed 0, saved with ``StableDiffusionPipeline.save_pretrained``; both sides load
it from disk): a UNet with cross-attention at 32x32 and 16x16 latents (SD 1.5's block layout, tiny
channels), the 8x VAE of the ``diffusion`` workload at 256 px (4x32x32 latents), one tiny CLIP text
encoder and its word-level tokenizer, and SD 1.5's DDIM settings (scaled-linear betas, steps_offset 1,
set_alpha_to_one false: every one of the sampled steps has a log-probability on both sides).

One step on both sides: 2 prompts x 4 images = 8 images sampled by DDIM (10 steps, eta 1,
classifier-free guidance 5 against the empty prompt), decoded by the VAE and scored by
:func:`mean_brightness`; per-prompt advantages (DDPO's stat tracker: buffer 16, min count 16),
clipped to +-5; PPO-clip (1e-4) on 5 of the 10 steps of each image (a random subset per image), the
mean over the 40 trained steps, one optimizer step (AdamW, lr 3e-4, weight decay 1e-4, gradient
clipping 1.0), LoRA rank 4 on the UNet's to_q/to_k/to_v/to_out.0, fp32.

Equal work is checked, not assumed: each runner counts the rows of every UNet call (without
gradient: sampling; with gradient: the update), the images its reward function saw and the UNet's
trainable parameters, and fails unless every step matches :func:`expected_work`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.diffusion import LORA_TARGETS, TEXT, VAE, WORDS, _tokenizer
from benchmarks.workloads import SEED, Workload

RESOLUTION = 256
PROMPTS_PER_STEP = 2
SAMPLES = 4  # images per prompt
SAMPLE_STEPS = 10
ETA = 1.0
GUIDANCE = 5.0
TIMESTEP_FRACTION = 0.5
TRAINED_STEPS = int(SAMPLE_STEPS * TIMESTEP_FRACTION)  # per image, both sides: int(fraction x steps)
OPTIMIZER = dict(lr=3e-4, weight_decay=1e-4, max_grad_norm=1.0)  # TRL DDPOConfig's defaults
PPO = dict(clip_range=1e-4, adv_clip_max=5.0, stat_buffer=16, stat_min_count=16)  # DDPO's defaults
UNET = dict(block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8, norm_num_groups=8, sample_size=RESOLUTION // 8, in_channels=4,
            out_channels=4, cross_attention_dim=TEXT["hidden_size"])
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # SD 1.5's scheduler config
COLOURS = ["red", "green", "blue", "yellow"]
OBJECTS = ["circle", "square", "cat", "dog", "tree", "house"]

# TRL 0.23.1 in an environment of its own (TRL 1.x has no DDPO), with the newest releases it runs on.
PEER_ENV = Path(__file__).resolve().parent / ".envs" / "trl-0.23"
PEER_PACKAGES = ["torch==2.13.0", "trl==0.23.1", "transformers==4.57.6", "diffusers==0.35.2", "peft==0.17.1",
                 "accelerate==1.10.1", "datasets==4.3.0"]


def make_ddpo_workload(warmup: int, steps: int) -> Workload:
    return Workload("ddpo", "ddpo", f"tiny SD 1.5 (8x VAE, {RESOLUTION} px), LoRA rank 4: {PROMPTS_PER_STEP} prompts "
                                    f"x {SAMPLES} images/step, DDIM {SAMPLE_STEPS} steps, {TRAINED_STEPS} trained "
                                    f"per image, sampling included (peer: TRL 0.23.1 DDPOTrainer)",
                    warmup, steps, pairs=PROMPTS_PER_STEP, samples=SAMPLES)


def build_ddpo(w: Workload) -> dict:
    """Save the pipeline under w.model_dir and the prompt records; return the parameter counts
    and the FLOPs of one UNet row (sampling forward, training forward + backward, with LoRA) and
    of one VAE decode."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    tok = _tokenizer()
    text = CLIPTextConfig(**TEXT, vocab_size=len(tok), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**dict(VAE, sample_size=RESOLUTION)),
                                   text_encoder=CLIPTextModel(text), tokenizer=tok, unet=UNet2DConditionModel(**UNET),
                                   scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(w.model_dir)
    _name_the_tokenizer_class(Path(w.model_dir))
    rng = random.Random(f"{SEED}-{w.name}")
    rows = [{"prompt": f"a photo of a {rng.choice(COLOURS)} {rng.choice(OBJECTS)}"} for _ in range(w.records_count)]
    unknown = [r["prompt"] for r in rows if any(word not in WORDS for word in r["prompt"].split())]
    if unknown:
        raise AssertionError(f"prompts with words outside the tokenizer's vocabulary: {unknown[:3]}")
    Path(w.data_file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"unet": sum(p.numel() for p in pipe.unet.parameters()),
            "vae": sum(p.numel() for p in pipe.vae.parameters()), **_flops(pipe)}


def _name_the_tokenizer_class(model_dir: Path) -> None:
    """transformers 5 saves the tokenizer as class ``TokenizersBackend``, which the peer's
    transformers 4.57 does not know; ``PreTrainedTokenizerFast`` (the same tokenizer.json) loads
    in both."""
    index, config = model_dir / "model_index.json", model_dir / "tokenizer" / "tokenizer_config.json"
    pipeline = json.loads(index.read_text())
    pipeline["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index.write_text(json.dumps(pipeline, indent=2))
    tokenizer = dict(json.loads(config.read_text()), tokenizer_class="PreTrainedTokenizerFast")
    config.write_text(json.dumps(tokenizer, indent=2))


def _flops(pipe) -> dict:
    import torch
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    unet, latent = pipe.unet, RESOLUTION // 8
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    x, t = torch.randn(2, 4, latent, latent), torch.tensor([501, 501])
    states = torch.randn(2, TEXT["max_position_embeddings"], TEXT["hidden_size"])
    with torch.no_grad(), FlopCounterMode(display=False) as sampling:
        unet(x, t, states)
    with FlopCounterMode(display=False) as training:
        unet(x, t, states).sample.square().mean().backward()
    with torch.no_grad(), FlopCounterMode(display=False) as decode:
        pipe.vae.decode(x[:1])
    return {"lora": sum(p.numel() for p in unet.parameters() if p.requires_grad),
            "sample_flops_per_row": sampling.get_total_flops() / 2,
            "train_flops_per_row": training.get_total_flops() / 2,
            "decode_flops_per_image": decode.get_total_flops()}


def expected_work(w: Workload) -> dict:
    """Per step: UNet rows without gradient (every denoising step of every image, conditional and
    unconditional rows), with gradient (the trained steps, both rows of guidance), images scored,
    and the UNet's trainable (LoRA) parameters."""
    images = w.pairs * w.samples
    return {"sample_rows": images * SAMPLE_STEPS * 2, "train_rows": images * TRAINED_STEPS * 2, "images": images,
            "lora_params": w.params["lora"]}


def ddpo_step_flops(w: Workload) -> float:
    """FLOPs of one step as counted by FlopCounterMode at build time: sampling forwards, the
    update's forward + backward, the VAE decodes (the text encoder's are negligible)."""
    work, p = expected_work(w), w.params
    return (work["sample_rows"] * p["sample_flops_per_row"] + work["train_rows"] * p["train_flops_per_row"]
            + work["images"] * p["decode_flops_per_image"])


def mean_brightness(pixels) -> list[float]:
    """The reward of both trainers: each image's mean pixel value in [0, 1] (mmalign's ``brightness``
    scorer). ``pixels``: [N, ...] values in [0, 1] (numpy or torch)."""
    return [float(image.mean()) for image in pixels]


class UNetCounter:
    """Counts the rows of every UNet forward, apart for calls with and without gradient, and the
    UNet's trainable parameters; :meth:`close_step` files one step's counts. Installed on the UNet
    class (``with UNetCounter() as counter:``, before any model is built) so that wrappers (PEFT,
    accelerate) all go through it; the class gets its own forward back on exit."""

    def __init__(self):
        self.steps: list[dict] = []
        self.current = {"sample_rows": 0, "train_rows": 0, "images": 0, "lora_params": 0}
        self.devices: set[str] = set()  # where the UNet ran ("cuda", "cpu"): a GPU run is checked

    def __enter__(self) -> UNetCounter:
        from diffusers import UNet2DConditionModel

        original = self.original = UNet2DConditionModel.forward
        counter = self

        def forward(unet, sample, *args, **kwargs):
            import torch

            counter.devices.add(sample.device.type)
            if torch.is_grad_enabled():
                counter.current["train_rows"] += sample.shape[0]
                counter.current["lora_params"] = sum(p.numel() for p in unet.parameters() if p.requires_grad)
            else:
                counter.current["sample_rows"] += sample.shape[0]
            return original(unet, sample, *args, **kwargs)

        UNet2DConditionModel.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        from diffusers import UNet2DConditionModel

        UNet2DConditionModel.forward = self.original

    def scored(self, images: int, side: int) -> None:
        if side != RESOLUTION:
            raise RuntimeError(f"scored images of {side} px, expected {RESOLUTION}")
        self.current["images"] += images

    def close_step(self) -> None:
        self.steps.append(self.current)
        self.current = {k: 0 for k in self.current}


def check_device(counter: UNetCounter, gpu: bool, who: str) -> list[str]:
    """The devices the UNet ran on; on a GPU run (``gpu``), every call must have run on CUDA."""
    devices = sorted(counter.devices)
    if gpu and devices != ["cuda"]:
        raise RuntimeError(f"{who}: a GPU run whose UNet ran on {devices}, not on CUDA alone")
    return devices


def check_work(w: Workload, steps: list[dict], who: str) -> None:
    want = expected_work(w)
    for i, got in enumerate(steps):
        if got != want:
            raise RuntimeError(f"{who} step {i + 1}: work {got}, expected {want} (not the same work as the other side)")
    if len(steps) != w.total_steps:
        raise RuntimeError(f"{who}: {len(steps)} steps counted, expected {w.total_steps}")


# --- mmalign ----------------------------------------------------------------------------------------
def ddpo_config(w: Workload, precision: str, out_dir: str) -> dict:
    return {
        "output_dir": out_dir, "seed": 0,
        "model": {"reward": "diffusion", "name_or_path": w.model_dir,
                  "lora": {"r": 4, "alpha": 4, "dropout": 0.0, "target_modules": LORA_TARGETS}},
        "data": {"train": w.data_file},
        "algorithm": {"name": "ddpo", "options": {
            "samples_per_prompt": w.samples, "scorers": {"benchmark_brightness": 1.0},
            "epsilon": PPO["clip_range"], "advantage_clip": PPO["adv_clip_max"], "stat_buffer": PPO["stat_buffer"],
            "stat_min_count": PPO["stat_min_count"],
            "sampling": {"num_inference_steps": SAMPLE_STEPS, "eta": ETA, "guidance_scale": GUIDANCE,
                         "timestep_fraction": TIMESTEP_FRACTION}}},
        "loss": {"beta": 0.0},  # DDPO: no KL, no reference
        "train": {"max_steps": w.total_steps, "batch_size": w.pairs, "lr": OPTIMIZER["lr"],
                  "weight_decay": OPTIMIZER["weight_decay"], "lr_scheduler": "constant",
                  "max_grad_norm": OPTIMIZER["max_grad_norm"], "precision": "bf16" if precision == "bf16" else "no",
                  "log_every": 1, "progress": False, "callbacks": ["benchmark_timer"]},
        "eval": {"evaluators": []},
    }


def run_mmalign_ddpo(w: Workload, precision: str, out_dir: str, log=print, gpu: bool = False) -> dict:
    import numpy as np

    from benchmarks.online import logged_split, train_timed
    from benchmarks.timing import memory, summarize

    def brightness(prompts, images) -> list[float]:
        counter.scored(len(images), images[0].size[0])
        return mean_brightness([np.asarray(image, dtype=np.float32) / 255.0 for image in images])

    with UNetCounter() as counter:
        stamps, rows = train_timed(ddpo_config(w, precision, out_dir), {"benchmark_brightness": brightness}, log,
                                   on_step=counter.close_step)
    check_work(w, counter.steps, "mmalign")
    devices = check_device(counter, gpu, "mmalign")
    return {**summarize(stamps, w.warmup), **logged_split(rows[w.warmup:]), "work_per_step": counter.steps[-1],
            "unet_devices": devices, **memory()}


# --- the peer's environment -------------------------------------------------------------------------
def peer_python(say=print, python: str | None = None) -> str:
    """The python of TRL 0.23.1's environment, created (venv + pip) on first use. A finished
    install leaves a marker listing its packages; without it (a first or interrupted install, or
    other pins) the environment is made again.

    ``python``: a prepared environment's python (``--ddpo-peer-python``, or
    ``MMALIGN_BENCH_DDPO_PYTHON``), used as is: for a machine without the network (the GPU session,
    benchmarks/gpu_session.sh, installs carried wheels over the machine's own CUDA torch). It only
    needs to run ``python -m benchmarks.ddpo_peer`` in the repository's root with TRL 0.23.1 and its
    dependencies importable; mmalign need not be."""
    if python:
        if not (Path(python).is_file() and os.access(python, os.X_OK)):
            raise FileNotFoundError(f"the DDPO peer's python {python} is not an executable file")
        say(f"the DDPO peer runs with the prepared python {python}")
        return str(python)
    python, marker = PEER_ENV / "bin" / "python", PEER_ENV / "installed.txt"
    if marker.exists() and marker.read_text().split() == PEER_PACKAGES and python.exists():
        return str(python)
    say(f"creating the DDPO peer's environment {PEER_ENV} ({' '.join(PEER_PACKAGES)}); a few minutes, once")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(PEER_ENV)], check=True)
    started = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True,
                   env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    marker.write_text("\n".join(PEER_PACKAGES) + "\n")
    say(f"  installed in {time.perf_counter() - started:.0f} s")
    return str(python)
