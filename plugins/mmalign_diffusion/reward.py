"""The diffusion modality: SD 1.5 / SDXL UNets; the score is the (negated) denoising error.

    s(c, x0) = -1/2 * mean_{latent dims} || target - model(x_t, t, c) ||^2,
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,  target = eps (epsilon) or v (v_prediction)

with eps and t drawn once per pair in ``collate`` and shared by chosen, rejected, policy and
reference. The engine's sigmoid loss -log sigmoid(beta * ((s_pol_w - s_ref_w) - (s_pol_l - s_ref_l)))
is then exactly Diffusion-DPO's eq. 14 as the diffusers SDXL DPO script implements it:

    loss = -log sigmoid(-beta_dpo / 2 * ((mse_pol_w - mse_pol_l) - (mse_ref_w - mse_ref_l)))

The 1/2 is folded into the score so that ``loss.beta`` means that script's ``--beta_dpo`` (the SD
1.5 script has no 1/2: its beta_dpo is loss.beta / 2); the paper's beta * T * omega(lambda_t) with a
constant weight is beta_dpo / 2 when the squared norm is a per-dimension mean. Chosen and rejected
go through the UNet in one pass of 2B rows. SFT minimises -s = mse / 2 on the chosen image;
``sample`` (mmalign_diffusion.online) draws DDIM trajectories whose groups score as [C, n] alike.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from mmalign.config import DataConfig, ModelConfig
from mmalign.data import Record
from mmalign.errors import ConfigError
from mmalign.in_memory import held, source_name
from mmalign.precision import DTYPES
from mmalign.protocol import ModalityPlugin, Samples, move_tensors
from mmalign.scores import Scores
from mmalign_diffusion import components as C
from mmalign_diffusion import online
from mmalign_diffusion.batch import DiffusionBatch, DiffusionGroup, content_digest, image_counts
from mmalign_diffusion.cache import TensorCache, fingerprint
from mmalign_diffusion.encoding import caption_embeddings, image_latents
from mmalign_diffusion.noise import batch_draws
from mmalign_diffusion.lora import (WEIGHT_NAME, LoraUNet, add_lora, load_lora_unet,
                                    load_lora_weights_into, loading_code, save_lora)
from mmalign_diffusion.options import OPTIONS, SUPPORTED_DTYPES, check_options, sampling_options  # noqa: F401
from mmalign_diffusion.passed import check_passed
from mmalign_diffusion.records import DiffusionExample, choose_view, parse_record
from mmalign_diffusion.steps import trajectory_scores
from mmalign_text.causal_lm import unwrap_wrappers

SCORE_SCALE = 0.5  # s = -0.5 * mse: loss.beta == --beta_dpo of the diffusers SDXL script


class _RecordsOnly:
    """The ``prepare`` of :class:`DiffusionReward`, without its components."""

    @staticmethod
    def prepare(record: Record, *, paired: bool) -> DiffusionExample:
        return parse_record(record, paired=paired)


class DiffusionReward(ModalityPlugin):
    score_kind = "denoising"  # s = -SCORE_SCALE * weighted denoising error
    name = "diffusion"
    batch_counts = staticmethod(image_counts)  # {"images": n} for the log's time/images_per_s
    per_unit_scores = True  # sampled trajectories: one unit per trained denoising step
    unit_chunks = True  # one step at a time: the update backpropagates step by step, as DDPO

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
        check_options(model_cfg)
        if model_cfg.tokenizer is not None:
            raise ConfigError("model.tokenizer: the diffusion plugin reads the tokenizers from the pipeline "
                              "(tokenizer/, tokenizer_2/); remove the key (or tokenizer_or_processor=).")

    def __init__(self, model_cfg: ModelConfig, data_cfg: DataConfig):
        self.check_config(model_cfg, data_cfg)
        self.cfg = model_cfg
        self.data = data_cfg
        self.options = check_options(model_cfg)
        self.eval_draws = int(self.options["eval_draws"])
        C.quiet_loading()  # here, not at registration: importing diffusers costs seconds
        if model_cfg.name_or_path is not None:
            self.comps = C.load_components(model_cfg.name_or_path, self.options["resolution"])
        else:
            self.comps, _ = C.build_tiny(dict(model_cfg.tiny))
            if self.options["resolution"]:
                self.comps.resolution = int(self.options["resolution"])
        self.passed = check_passed(model_cfg)  # a pipeline from mmalign.train: used as it is
        for enc in self.comps.text_encoders if not self.passed else ():
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
        if self.passed:
            return C.load_unet(self.cfg.name_or_path)
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
        unet = C.load_unet(name_or_path)
        return unet if held(name_or_path) is not None else unet.to(DTYPES[self.cfg.dtype])

    def load_trained(self, directory: str | Path) -> nn.Module:
        """A model written by ``save``: a pipeline directory, or a LoRA adapter over the base."""
        directory = Path(directory)
        if (directory / WEIGHT_NAME).exists():
            base_dir = directory / "base_pipeline"
            if base_dir.exists():
                base = C.load_unet(str(base_dir))
            elif self.passed:  # the pipeline object now carries the trained adapter: its base from its path
                base = C.load_unet(source_name(self.cfg.name_or_path))
            else:
                base = self._base_unet()
            return load_lora_unet(base, directory)
        return C.load_unet(str(directory))

    def save(self, model: nn.Module, directory: Path) -> None:
        """LoRA: ``pytorch_lora_weights.safetensors`` that ``pipeline.load_lora_weights(directory)``
        loads (plus ``base_pipeline/`` when the base was built from ``model.tiny``). Full fine-tuning:
        a whole pipeline directory that ``StableDiffusion(XL)Pipeline.from_pretrained(directory)``
        loads, the trained UNet in ``unet/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = unwrap_wrappers(model)
        if isinstance(model, LoraUNet):
            save_lora(model, directory, self.comps.architecture)
            if source_name(self.cfg.name_or_path) is None:
                C.make_pipeline(self.comps, self._base_unet()).save_pretrained(directory / "base_pipeline")
            return
        C.make_pipeline(self.comps, model).save_pretrained(directory, safe_serialization=True)

    @classmethod
    def how_to_load(cls, directory: Path, ref: str, base: Optional[str]) -> tuple[str, str]:
        return "diffusers", loading_code(directory, ref, base)  # model card: DiffusionPipeline (+ LoRA)

    def load_weights(self, model: nn.Module, directory: Path) -> None:
        """Weights written by ``save`` into ``model`` in place (exact resume)."""
        from safetensors.torch import load_file

        model = unwrap_wrappers(model)
        if isinstance(model, LoraUNet):
            load_lora_weights_into(model, directory)
            return
        state = load_file(str(Path(directory) / "unet" / "diffusion_pytorch_model.safetensors"))
        model.load_state_dict(state, strict=True)

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, record: Record, *, paired: bool) -> DiffusionExample:
        return parse_record(record, paired=paired)

    def collate(self, examples: list[DiffusionExample | DiffusionGroup],
                generator: Optional[torch.Generator] = None) -> DiffusionBatch:
        """All randomness of a step: per pair one noise tensor, one timestep, one horizontal flip
        and one crop position (used only with the random_* options). ``noise: per_step`` draws
        them from ``generator``; ``per_example`` from a generator seeded by the pair's content and
        ``noise_seed``, so a pair gets the same draw in every epoch and every batch. Sampled groups
        (mmalign_diffusion.online) get one draw per group, shared by its n images."""
        if isinstance(examples[0], DiffusionGroup):
            return online.collate_groups(self, examples, generator)
        paired = examples[0].rejected is not None
        res = self.comps.resolution
        noise, timesteps, flips, crops = batch_draws(self, examples, generator)
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

    def content_fingerprint(self, examples: list[DiffusionExample]) -> str:
        """The images' bytes (sha256 digests) in order: part of the on-disk reference-cache key."""
        return content_digest(examples)

    def _caches(self) -> tuple[TensorCache, TensorCache]:
        if self._latent_cache is None:
            directory = self.options["cache_dir"]
            vae_fp = fingerprint([self.comps.vae], "latents", self.comps.resolution)
            text_fp = fingerprint(self.comps.text_encoders, "text", self.comps.architecture)
            self._latent_cache = TensorCache(directory, f"latents-{vae_fp}")
            self._text_cache = TensorCache(directory, f"text-{text_fp}")
        return self._latent_cache, self._text_cache

    def to_device(self, batch: DiffusionBatch, device: torch.device) -> DiffusionBatch:
        """The batch's tensors moved to ``device`` (the image references stay as they are)."""
        move = lambda t: None if t is None else move_tensors(t, device)  # noqa: E731
        return replace(batch, **{k: move(getattr(batch, k)) for k in ("noise", "timesteps", "time_ids", "latents",
                                                                      "text", "pooled", "steps")})

    def _encoders_to(self, device: torch.device) -> None:
        """The frozen VAE and text encoders follow the batches (and the sampled model) to ``device``."""
        device = torch.device(device)
        if device != self.device:
            for module in self.comps.frozen():
                module.to(device)
            self.device = device

    def encode(self, batch: DiffusionBatch) -> DiffusionBatch:
        """The VAE latents (kept when collate brought them: sampled groups) and text embeddings,
        looked up in the caches and computed on a miss by the frozen encoders, on the batch's device."""
        device = batch.noise.device
        self._encoders_to(device)
        latent_cache, text_cache = self._caches()
        latents = batch.latents
        if latents is None:
            latents = image_latents(self.comps, latent_cache, batch.images, batch.views, device)
        text, pooled = caption_embeddings(self.comps, text_cache, batch.captions, device)
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(batch, latents=move(latents), text=move(text), pooled=move(pooled))

    # --- scores -------------------------------------------------------------------------------
    def denoising_error(self, model: nn.Module, batch: DiffusionBatch) -> Tensor:
        """mean_{dims} ||target - model(x_t, t, c)||^2 per row: [R] (one UNet pass over all rows)."""
        if batch.latents is None or batch.text is None:
            raise ValueError("diffusion score: the batch is not encoded; run plugin.encode(batch) after "
                             "plugin.to_device(batch, device), as mmalign.batches.next_batch does.")
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
        dtype = next(p.dtype for p in unwrap_wrappers(model).parameters())
        pred = model(noisy.to(dtype), t, encoder_hidden_states=batch.text.repeat(reps, 1, 1).to(dtype),
                     **kwargs).sample
        acc = torch.promote_types(pred.dtype, torch.float32)  # fp32 at least, fp64 if given
        return (pred.to(acc) - target.to(acc)).pow(2).flatten(1).mean(dim=1)

    def score(self, model: nn.Module, batch: DiffusionBatch, *, per_unit: bool = False,
              units: Optional[slice] = None) -> Scores:
        """Scores [B, k] with s = -SCORE_SCALE * denoising error, one unit per image (rows are
        response-major, so row j * B + i is response j of context i); a batch of sampled
        trajectories scores the log-probs of its steps, one unit per step (mmalign_diffusion.steps),
        ``units`` only of them."""
        if batch.steps is not None:  # sampled trajectories: per denoising step log-probs (DDPO)
            return trajectory_scores(self, model, batch, units)
        s = -SCORE_SCALE * self.denoising_error(model, batch)
        sums = s.view(-1, batch.noise.shape[0]).t().contiguous()
        return Scores(sums, torch.ones_like(sums))

    # --- samples ------------------------------------------------------------------------------
    def unit_count(self, batch: DiffusionBatch) -> int:
        return batch.steps.selected.shape[1]  # the trained steps of each sampled image

    def sample(self, model: nn.Module, contexts: list, n: int, generator: torch.Generator,
               **options) -> Samples:
        """``n`` images per context ({"prompt": caption}) by DDIM with the trajectory recorded;
        options ``steps`` (20), ``guidance_scale`` (1.0), ``eta`` (1.0), ``score``, ``timestep_fraction``:
        see mmalign_diffusion.online."""
        return online.sample(self, model, contexts, n, generator, **options)

    sampling_options = classmethod(lambda cls, options: sampling_options(options))  # algorithm.options.sampling
