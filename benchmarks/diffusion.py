"""The diffusion workload and its baseline: Diffusion-DPO on a tiny SDXL-architecture pipeline.

Pipeline (built once from configs, seed 0, saved with ``StableDiffusionXLPipeline.save_pretrained``
so both trainers load the same weights): a UNet of about 1.7M parameters with SDXL's "text_time"
micro-conditioning and cross-attention at 32x32 and 16x16, a VAE that downsamples 8x as the real one
does (512 px images -> 4x64x64 latents), two tiny CLIP text encoders; LoRA rank 4 on the attention
projections (to_q, to_k, to_v, to_out.0), the reference being the UNet with its adapters disabled.

The baseline re-implements the training step of the diffusers Diffusion-DPO SDXL script
(examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py): every step it decodes both
images of each pair, resizes / crops / normalizes them, encodes them with the VAE, encodes the
captions with both text encoders, draws one noise and one timestep per pair (shared by chosen and
rejected), runs the LoRA UNet on the 2B rows, runs it again with adapters disabled for the
reference, and takes -log sigmoid(-beta/2 * ((mse_w - mse_l) - (ref_w - ref_l))).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.workloads import SEED, Workload, visit_order

RESOLUTION = 512
BETA_DPO = 5000.0  # the SDXL script's --beta_dpo
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
WORDS = ["a", "photo", "of", "red", "green", "blue", "yellow", "circle", "square", "cat", "dog", "tree",
         "house", "on", "the", "background", "small", "large", "bright", "dark"]
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            projection_dim=32, max_position_embeddings=16)
VAE = dict(block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
           norm_num_groups=8, sample_size=RESOLUTION)
UNET = dict(block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=8, sample_size=RESOLUTION // 8, in_channels=4,
            out_channels=4, cross_attention_dim=2 * TEXT["hidden_size"], addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + TEXT["projection_dim"])


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>"] + WORDS)},
                                      unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                        special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=TEXT["max_position_embeddings"])


def build_diffusion(w: Workload, root: Path) -> dict:
    """Save the pipeline under root/model and the pairs (512 px PNGs) under root/data; return the
    parameter counts and the UNet FLOPs per row measured with torch's FlopCounterMode."""
    import numpy as np
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    tok = _tokenizer()
    text = CLIPTextConfig(**TEXT, vocab_size=len(tok), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    unet = UNet2DConditionModel(**UNET)
    pipe = StableDiffusionXLPipeline(vae=AutoencoderKL(**VAE), text_encoder=CLIPTextModel(text),
                                     text_encoder_2=CLIPTextModelWithProjection(text), tokenizer=tok,
                                     tokenizer_2=_tokenizer(), unet=unet,
                                     scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                                             prediction_type="epsilon"))
    pipe.save_pretrained(Path(w.model_dir))
    rng = random.Random(f"{SEED}-{w.name}")
    gen = np.random.default_rng(SEED)
    images = Path(w.data_file).parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(w.records_count):
        names = []
        for side in ("w", "l"):
            coarse = gen.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            names.append(f"images/{i:04d}-{side}.png")
            Image.fromarray(coarse).resize((RESOLUTION, RESOLUTION), Image.BILINEAR).save(images.parent / names[-1])
        rows.append({"id": f"r{i}", "prompt": " ".join(rng.choice(WORDS) for _ in range(8)),
                     "chosen": names[0], "rejected": names[1]})
    Path(w.data_file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {"unet": sum(p.numel() for p in unet.parameters()),
              "vae": sum(p.numel() for p in pipe.vae.parameters())}
    params.update(_unet_flops(unet, rows=2 * w.pairs))
    return params


def _unet_flops(unet, rows: int) -> dict:
    """FLOPs per UNet row: the LoRA policy's forward + backward, and the reference forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet.add_adapter(lora_config())
    inputs = _dummy_inputs(rows)
    with FlopCounterMode(display=False) as policy:
        unet(*inputs[:2], encoder_hidden_states=inputs[2], added_cond_kwargs=inputs[3]).sample.square().mean().backward()
    with torch.no_grad(), FlopCounterMode(display=False) as reference:
        unet(*inputs[:2], encoder_hidden_states=inputs[2], added_cond_kwargs=inputs[3])
    params = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return {"lora": params, "policy_flops_per_row": policy.get_total_flops() / rows,
            "reference_flops_per_row": reference.get_total_flops() / rows}


def _dummy_inputs(rows: int):
    import torch

    latent = RESOLUTION // 8
    return (torch.randn(rows, 4, latent, latent), torch.randint(0, 1000, (rows,)),
            torch.randn(rows, TEXT["max_position_embeddings"], 2 * TEXT["hidden_size"]),
            {"text_embeds": torch.randn(rows, TEXT["projection_dim"]),
             "time_ids": torch.tensor([[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]] * rows).float()})


# --- the baseline -------------------------------------------------------------------------------------
def run_baseline(w: Workload, precision: str, lr: float, weight_decay: float) -> dict:
    """The diffusers SDXL Diffusion-DPO training step, re-encoding images and captions every step.
    Returns per-step timestamps and the seconds spent encoding (VAE + text) in each step."""
    import torch

    parts = _baseline_parts(w, precision, lr, weight_decay)
    rows = [json.loads(line) for line in Path(w.data_file).read_text().splitlines()]
    root = Path(w.data_file).parent
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    order = visit_order(len(rows), w.total_steps * w.pairs)
    stamps, encode_s = [], []
    parts.unet.train()
    for step in range(w.total_steps):
        batch = [rows[i] for i in order[step * w.pairs:(step + 1) * w.pairs]]
        encode_s.append(_baseline_step(parts, batch, root, generator))
        stamps.append(time.perf_counter())
    return {"stamps": stamps, "encode_s": encode_s}


def _baseline_parts(w: Workload, precision: str, lr: float, weight_decay: float) -> SimpleNamespace:
    """The script's models (frozen text encoders and VAE in fp32, a LoRA UNet), optimizer and accelerator."""
    import torch
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no",
                              cpu=not torch.cuda.is_available())
    path = w.model_dir
    tokenizers = [AutoTokenizer.from_pretrained(path, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    encoders = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
                CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2")]
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    for m in (*encoders, vae, unet):
        m.requires_grad_(False)
        m.to(accelerator.device)
    vae.to(dtype=torch.float32)  # the script keeps the VAE in fp32
    unet.add_adapter(lora_config())
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    return SimpleNamespace(accelerator=accelerator, device=accelerator.device, tokenizers=tokenizers,
                           encoders=encoders, vae=vae, unet=unet, params=params, optimizer=optimizer,
                           scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler"))


def _baseline_step(parts: SimpleNamespace, batch: list[dict], root: Path, generator) -> float:
    """One training step of the script on ``batch``; returns the seconds spent encoding."""
    import torch
    import torch.nn.functional as F

    device, unet, b = parts.device, parts.unet, len(batch)
    # the script's dataset transform: chosen and rejected stacked on the channel axis
    pixel_values = torch.stack([torch.cat([_pixels(root, r["chosen"]), _pixels(root, r["rejected"])]) for r in batch])
    started = time.perf_counter()
    with torch.no_grad():
        feed = torch.cat(pixel_values.to(device).chunk(2, dim=1))  # [2B, 3, H, W]: chosen, then rejected
        latents = parts.vae.encode(feed).latent_dist.sample() * parts.vae.config.scaling_factor
        prompt_embeds, pooled = _encode_prompt(parts, [r["prompt"] for r in batch])
    _sync()
    encode_s = time.perf_counter() - started
    noise = torch.randn(latents.shape, generator=generator).to(device).chunk(2)[0].repeat(2, 1, 1, 1)
    timesteps = torch.randint(0, parts.scheduler.config.num_train_timesteps, (b,), generator=generator)
    timesteps = timesteps.to(device).repeat(2)
    noisy = parts.scheduler.add_noise(latents, noise, timesteps)
    time_ids = torch.tensor([[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]] * 2 * b,
                            dtype=torch.float32, device=device)
    cond = {"time_ids": time_ids, "text_embeds": pooled.repeat(2, 1)}
    prompt_embeds = prompt_embeds.repeat(2, 1, 1)

    pred = unet(noisy, timesteps, prompt_embeds, added_cond_kwargs=cond).sample
    losses = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=[1, 2, 3])
    model_diff = losses[:b] - losses[b:]
    with torch.no_grad():
        parts.accelerator.unwrap_model(unet).disable_adapters()
        ref = unet(noisy, timesteps, prompt_embeds, added_cond_kwargs=cond).sample
        ref_losses = F.mse_loss(ref.float(), noise.float(), reduction="none").mean(dim=[1, 2, 3])
        ref_diff = ref_losses[:b] - ref_losses[b:]
        parts.accelerator.unwrap_model(unet).enable_adapters()
    loss = -F.logsigmoid(-0.5 * BETA_DPO * (model_diff - ref_diff)).mean()
    parts.accelerator.backward(loss)
    parts.accelerator.clip_grad_norm_(parts.params, 1.0)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    _sync()
    return encode_s


def _pixels(root: Path, name: str):
    """The script's image transform: Resize, CenterCrop, ToTensor, Normalize([0.5], [0.5])."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(root / name) as img:
        img = img.convert("RGB").resize((RESOLUTION, RESOLUTION), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0


def _encode_prompt(parts: SimpleNamespace, captions: list[str]):
    """Both CLIP encoders' penultimate hidden states, concatenated, and the second one's pooled output."""
    import torch

    states, pooled = [], None
    for tok, enc in zip(parts.tokenizers, parts.encoders):
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(parts.device)
        out = enc(ids, output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
