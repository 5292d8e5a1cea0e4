"""The diffusion modality: SD 1.5 / SDXL UNets; the score is the (negated) denoising error.

    s(c, x0) = -1/2 * mean_{latent dims} || target - model(x_t, t, c) ||^2,
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,  target = eps (epsilon) or v (v_prediction)

with eps and t drawn once per pair in ``collate`` and shared by chosen, rejected, policy and
reference. The engine's sigmoid loss -log sigmoid(beta * ((s_pol_w - s_ref_w) - (s_pol_l - s_ref_l)))
is then exactly Diffusion-DPO's eq. 14 as the diffusers DPO scripts implement it:

    loss = -log sigmoid(-beta_dpo / 2 * ((mse_pol_w - mse_pol_l) - (mse_ref_w - mse_ref_l)))

The 1/2 is folded into the score so that ``loss.beta`` means the scripts' ``--beta_dpo`` (2500 for
SD 1.5, 5000 for SDXL): the paper's beta * T * omega(lambda_t) with a constant weight is beta_dpo / 2
when the squared norm is a per-dimension mean. Chosen and rejected go through the UNet in one pass
of 2B rows. SFT (``loss.name: sft``) minimises -s = mse / 2 on the chosen image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from mmalign.config import DataConfig, ModelConfig
from mmalign.data import Record
from mmalign.errors import ConfigError
from mmalign.reward import PairScores
from mmalign_diffusion import components as C
from mmalign_diffusion.cache import TensorCache, fingerprint
from mmalign_diffusion.lora import (WEIGHT_NAME, LoraUNet, add_lora, load_lora_unet,
                                    load_lora_weights_into, save_lora)
from mmalign_diffusion.records import (DiffusionExample, ImageRef, View, choose_view, load_pixels,
                                       parse_record)

SCORE_SCALE = 0.5  # s = -0.5 * mse: loss.beta == --beta_dpo of the diffusers scripts
OPTIONS = {"resolution": None, "random_crop": False, "random_flip": False, "cache_dir": None,
           "eval_draws": 4, "noise": "per_step", "noise_seed": 0}
NOISE_MODES = ("per_step", "per_example")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DiffusionBatch:
    """R = B rows (unpaired) or 2B rows (B chosen, then B rejected)."""

    captions: list[str]  # [B]
    images: list[ImageRef]  # [R]
    views: list[View]  # [R] crop and flip of each image
    noise: Tensor  # [B, C, h, w] one draw per pair, shared by its chosen and rejected rows
    timesteps: Tensor  # [B] long, one per pair
    time_ids: Optional[Tensor]  # [R, 6] SDXL micro-conditioning; None for SD 1.5
    paired: bool
    latents: Optional[Tensor] = None  # [R, C, h, w] set by to_device (cached VAE latents)
    text: Optional[Tensor] = None  # [B, L, D] set by to_device (cached text embeddings)
    pooled: Optional[Tensor] = None  # [B, P] SDXL pooled text embedding


def unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


class _RecordsOnly:
    """The ``prepare`` of :class:`DiffusionReward`, without its components."""

    @staticmethod
    def prepare(record: Record, *, paired: bool) -> DiffusionExample:
        return parse_record(record, paired=paired)


class DiffusionReward:
    name = "diffusion"

    @property
    def deterministic_collate(self) -> bool:
        """Per-example noise makes a pair's batch, and so its reference score, the same every time:
        ``reference.cache`` may then score the reference once."""
        return self.options["noise"] == "per_example"

    @staticmethod
    def record_checker(model_cfg: ModelConfig, data_cfg: DataConfig):
        """What ``mmalign check`` runs ``prepare`` with: records need no component (building the
        factory would load the VAE and text encoders), so ``parse_record`` alone."""
        DiffusionReward.check_config(model_cfg, data_cfg)
        return _RecordsOnly()

    @staticmethod
    def check_config(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
        """The plugin's keys, checked before anything loads (mmalign.validation calls it too)."""
        unknown = set(model_cfg.options) - set(OPTIONS)
        if unknown:
            raise ConfigError(f"model.options: unknown option '{sorted(unknown)[0]}' for the diffusion "
                              f"plugin. Known: {', '.join(sorted(OPTIONS))}.")
        if model_cfg.dtype not in DTYPES:
            raise ConfigError(f"model.dtype: '{model_cfg.dtype}' is not supported by the diffusion "
                              f"plugin; use one of {', '.join(DTYPES)}.")
        options = {**OPTIONS, **model_cfg.options}
        if options["noise"] not in NOISE_MODES:
            raise ConfigError(f"model.options.noise: '{options['noise']}' is not a noise mode; use "
                              f"per_step (a fresh draw every step, as the diffusers scripts) or "
                              f"per_example (one fixed draw per pair, which lets reference.cache work).")
        for name, low in (("eval_draws", 1), ("resolution", 8), ("noise_seed", 0)):
            value = options[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"model.options.{name} must be an integer >= {low}, got {value!r}.")

    def __init__(self, model_cfg: ModelConfig, data_cfg: DataConfig):
        self.check_config(model_cfg, data_cfg)
        self.cfg = model_cfg
        self.data = data_cfg
        self.options = {**OPTIONS, **model_cfg.options}
        self.eval_draws = int(self.options["eval_draws"])
        if model_cfg.name_or_path is not None:
            self.comps = C.load_components(model_cfg.name_or_path, self.options["resolution"])
        else:
            self.comps, _ = C.build_tiny(dict(model_cfg.tiny))
            if self.options["resolution"]:
                self.comps.resolution = int(self.options["resolution"])
        for enc in self.comps.text_encoders:
            enc.to(DTYPES[model_cfg.dtype])
        self.scheduler = self.comps.scheduler
        kind = self.scheduler.config.prediction_type
        if kind not in ("epsilon", "v_prediction"):
            raise ConfigError(f"the pipeline's scheduler predicts '{kind}'; the diffusion plugin "
                              f"supports epsilon and v_prediction.")
        self.device = torch.device("cpu")
        self._latent_cache = self._text_cache = None

    # --- models -------------------------------------------------------------------------------
    def _base_unet(self) -> nn.Module:
        """The UNet in ``model.dtype`` (storage). The engine upcasts what trains to fp32 master
        weights (mmalign.precision), so a LoRA base stays in model.dtype and adapters are fp32."""
        if self.cfg.name_or_path is not None:
            unet = C.load_unet(self.cfg.name_or_path)
        else:
            unet = C.build_tiny(dict(self.cfg.tiny))[1]
        return unet.to(DTYPES[self.cfg.dtype])

    def load_policy(self) -> nn.Module:
        unet = self._base_unet()
        if self.cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if self.cfg.lora is None:
            return unet
        return add_lora(unet, self.cfg.lora)

    def load_reference(self, name_or_path: str) -> nn.Module:
        return C.load_unet(name_or_path).to(DTYPES[self.cfg.dtype])

    def load_trained(self, directory: str | Path) -> nn.Module:
        """A model written by ``save``: a pipeline directory, or a LoRA adapter over the base."""
        directory = Path(directory)
        if (directory / WEIGHT_NAME).exists():
            base_dir = directory / "base_pipeline"
            base = C.load_unet(str(base_dir)) if base_dir.exists() else self._base_unet()
            return load_lora_unet(base, directory)
        return C.load_unet(str(directory))

    def save(self, model: nn.Module, directory: Path) -> None:
        """LoRA: ``pytorch_lora_weights.safetensors`` that ``pipeline.load_lora_weights(directory)``
        loads (plus ``base_pipeline/`` when the base was built from ``model.tiny``). Full fine-tuning:
        a whole pipeline directory that ``StableDiffusion(XL)Pipeline.from_pretrained(directory)``
        loads, the trained UNet in ``unet/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = unwrap(model)
        if isinstance(model, LoraUNet):
            save_lora(model, directory, self.comps.architecture)
            if self.cfg.name_or_path is None:
                C.make_pipeline(self.comps, self._base_unet()).save_pretrained(directory / "base_pipeline")
            return
        C.make_pipeline(self.comps, model).save_pretrained(directory, safe_serialization=True)

    def load_weights(self, model: nn.Module, directory: Path) -> None:
        """Weights written by ``save`` into ``model`` in place (exact resume)."""
        from safetensors.torch import load_file

        model = unwrap(model)
        if isinstance(model, LoraUNet):
            load_lora_weights_into(model, directory)
            return
        state = load_file(str(Path(directory) / "unet" / "diffusion_pytorch_model.safetensors"))
        model.load_state_dict(state, strict=True)

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, record: Record, *, paired: bool) -> DiffusionExample:
        return parse_record(record, paired=paired)

    def collate(self, examples: list[DiffusionExample], generator: Optional[torch.Generator] = None) -> DiffusionBatch:
        """All randomness of a step: per pair one noise tensor, one timestep, one horizontal flip
        and one crop position (used only with the random_* options). ``noise: per_step`` draws
        them from ``generator``; ``per_example`` from a generator seeded by the pair's content and
        ``noise_seed``, so a pair gets the same draw in every epoch and every batch."""
        paired = examples[0].rejected is not None
        b, res = len(examples), self.comps.resolution
        shape = (self.comps.vae.config.latent_channels, self.comps.latent_size, self.comps.latent_size)
        steps = self.scheduler.config.num_train_timesteps
        if self.options["noise"] == "per_example":
            draws = [self._draw(shape, steps, torch.Generator().manual_seed(self._pair_seed(e))) for e in examples]
            noise, timesteps, flips, crops = (torch.stack(d) for d in zip(*draws))
        else:
            if generator is None:
                raise ValueError("collate with noise: per_step needs the run's generator")
            noise, timesteps, flips, crops = self._draw(shape, steps, generator, (b,))
        images, views = [], []
        for side in ("chosen", "rejected") if paired else ("chosen",):
            for i, e in enumerate(examples):
                ref = getattr(e, side)
                images.append(ref)
                views.append(choose_view(ref.size, res, random_crop=self.options["random_crop"],
                                         u=float(crops[i]), flip=bool(flips[i]) and self.options["random_flip"]))
        time_ids = None
        if self.comps.architecture == "sdxl":
            time_ids = torch.tensor([C.time_ids(ref.size, (v.top, v.left), res)
                                     for ref, v in zip(images, views)], dtype=torch.float32)
        return DiffusionBatch([e.caption for e in examples], images, views, noise, timesteps,
                              time_ids, paired)

    @staticmethod
    def _draw(shape: tuple, steps: int, generator: torch.Generator, size: tuple = ()):
        """(noise, timestep, flip, crop position) drawn in this order: one set, or ``size`` of them."""
        return (torch.randn((*size, *shape), generator=generator), torch.randint(0, steps, size, generator=generator),
                torch.rand(size, generator=generator) < 0.5, torch.rand(size, generator=generator))

    def _pair_seed(self, e: DiffusionExample) -> int:
        parts = [e.caption, e.chosen.digest(), e.rejected.digest() if e.rejected is not None else "",
                 str(self.options["noise_seed"])]
        return int(hashlib.sha256("\0".join(parts).encode()).hexdigest()[:15], 16)

    def content_fingerprint(self, examples: list[DiffusionExample]) -> str:
        """The images' bytes (sha256 digests) in order: part of the on-disk reference-cache key."""
        h = hashlib.sha256()
        for e in examples:
            for ref in (e.chosen, e.rejected):
                h.update((ref.digest() if ref is not None else "-").encode())
        return h.hexdigest()

    def _caches(self) -> tuple[TensorCache, TensorCache]:
        if self._latent_cache is None:
            directory = self.options["cache_dir"]
            vae_fp = fingerprint([self.comps.vae], "latents", self.comps.resolution)
            text_fp = fingerprint(self.comps.text_encoders, "text", self.comps.architecture)
            self._latent_cache = TensorCache(directory, f"latents-{vae_fp}")
            self._text_cache = TensorCache(directory, f"text-{text_fp}")
        return self._latent_cache, self._text_cache

    def to_device(self, batch: DiffusionBatch, device: torch.device) -> DiffusionBatch:
        """Move to ``device``, with the VAE latents and text embeddings looked up in the caches
        (computed on ``device`` by the frozen encoders on a miss)."""
        device = torch.device(device)
        if device != self.device:
            for module in self.comps.frozen():
                module.to(device)
            self.device = device
        latent_cache, text_cache = self._caches()
        res = self.comps.resolution
        keys = [f"{ref.digest()}-{res}-{v.top}-{v.left}-{int(v.flip)}" for ref, v in zip(batch.images, batch.views)]

        # One image per VAE call and one caption per text-encoder call: batched kernels round
        # differently with the batch size (~1e-7, magnified by beta ~ 5000), and a record's cached
        # encoding must not depend on which batch first missed the cache (exact resume, DDP).
        def encode(indices: list[int]) -> list[tuple[Tensor, ...]]:
            return [(C.encode_images(self.comps, load_pixels(batch.images[i], res, batch.views[i])[None].to(device))
                     .float()[0],) for i in indices]

        latents = torch.stack([v[0] for v in latent_cache.get_many(keys, encode)])

        def embed(indices: list[int]) -> list[tuple[Tensor, ...]]:
            out = []
            for i in indices:
                states, pooled = C.encode_text(self.comps, [batch.captions[i]], device)
                out.append((states[0].float(),) if pooled is None else (states[0].float(), pooled[0].float()))
            return out

        text_keys = [hashlib.sha256(c.encode()).hexdigest() for c in batch.captions]
        embedded = text_cache.get_many(text_keys, embed)
        text = torch.stack([e[0] for e in embedded])
        pooled = torch.stack([e[1] for e in embedded]) if self.comps.architecture == "sdxl" else None
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(batch, noise=move(batch.noise), timesteps=move(batch.timesteps),
                       time_ids=move(batch.time_ids), latents=move(latents), text=move(text),
                       pooled=move(pooled))

    # --- scores -------------------------------------------------------------------------------
    def denoising_error(self, model: nn.Module, batch: DiffusionBatch) -> Tensor:
        """mean_{dims} ||target - model(x_t, t, c)||^2 per row: [R] (one UNet pass over all rows)."""
        rows = batch.latents.shape[0]
        reps = rows // batch.noise.shape[0]
        noise = batch.noise.repeat(reps, 1, 1, 1)
        t = batch.timesteps.repeat(reps)
        latents = batch.latents
        noisy = self.scheduler.add_noise(latents, noise, t)
        if self.scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, t)
        kwargs = {}
        if batch.time_ids is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": batch.pooled.repeat(reps, 1),
                                           "time_ids": batch.time_ids}
        dtype = next(p.dtype for p in unwrap(model).parameters())
        pred = model(noisy.to(dtype), t, encoder_hidden_states=batch.text.repeat(reps, 1, 1).to(dtype),
                     **kwargs).sample
        acc = torch.promote_types(pred.dtype, torch.float32)  # fp32 at least, fp64 if given
        return (pred.to(acc) - target.to(acc)).pow(2).flatten(1).mean(dim=1)

    def score(self, model: nn.Module, batch: DiffusionBatch) -> PairScores:
        s = -SCORE_SCALE * self.denoising_error(model, batch)
        ones = torch.ones_like(s)
        if not batch.paired:
            return PairScores(s, None, ones, None)
        b = batch.noise.shape[0]
        return PairScores(s[:b], s[b:], ones[:b], ones[b:])
