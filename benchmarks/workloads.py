"""The benchmark workloads: tiny models built once from configs with a fixed seed, and synthetic data
written once, so that mmalign and the peer load exactly the same weights and read the same records.

Records use a word-level vocabulary ``w0 .. w7994`` (one word = one token), so every length in the
issue is an exact token count. Completions end with an explicit ``<eos>`` (which both trainers keep
as is), so a completion of L tokens is L - 1 words and ``<eos>``.

A workload's order of batches is mmalign's visiting order (see :func:`visit_order`); the peer reads
the records in that order with a sequential sampler, so both see the same batches step by step.
The diffusion workload's pipeline and images are built in :mod:`benchmarks.diffusion`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<image>"]
VOCAB = 8000
PAIRS_PER_STEP = 4
SEED = 0

LLAMA = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=688, vocab_size=VOCAB, max_position_embeddings=2048,
             tie_word_embeddings=False)
CLIP = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            image_size=224, patch_size=14)
IMAGE_TOKENS = (224 // 14) ** 2  # LLaVA "default" strategy drops CLS: 256 tokens per image


@dataclass
class Lengths:
    """Token counts of one record (completions include their <eos>)."""

    prompt: int
    chosen: int
    rejected: int
    image_tokens: int = 0


@dataclass
class Workload:
    name: str
    kind: str  # "text", "vlm", "diffusion", "online" (text), "vlm_online" or "ddpo"
    description: str
    warmup: int  # steps run before timing starts
    steps: int  # timed steps
    pairs: int = PAIRS_PER_STEP  # pairs per optimizer step
    epoch_steps: int = 0  # steps per pass over the records; 0: one pass over all steps
    samples: int = 0  # online: completions per prompt (G); ``pairs`` then counts prompts per step
    root: str = ""  # filled by build(): model/, data/
    records: list[Lengths] = field(default_factory=list)  # in the order of the data file
    order: list[int] = field(default_factory=list)  # records visited, in mmalign's order (the peer's)
    params: dict = field(default_factory=dict)  # parameter counts per group (see flops.py)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def records_count(self) -> int:
        return (self.epoch_steps or self.total_steps) * self.pairs

    @property
    def model_dir(self) -> str:
        return str(Path(self.root) / "model")

    @property
    def data_file(self) -> str:
        return str(Path(self.root) / "data" / "train.jsonl")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Workload:
        data = dict(data)
        data["records"] = [Lengths(**r) for r in data["records"]]
        return cls(**data)


def workload_names() -> list[str]:
    """Every workload; diffusion only where its plugin is registered (diffusers installed, not
    blocked with MMALIGN_BLOCK_PLUGINS)."""
    from mmalign.plugins import registry

    names = ["text_long", "text_variable", "vlm", "grpo", "rloo", "vlm_grpo"]
    return names + (["diffusion", "ddpo"] if "diffusion" in registry().names("rewards") else [])


def make_workload(name: str, quick: bool = False) -> Workload:
    """The issue's workloads. ``quick``: one warm-up step and two timed steps (a smoke run; diffusion
    keeps its 3 warm-up steps, the first epoch, and times one more epoch)."""
    warmup, steps = (1, 2) if quick else (2, 8)
    if name == "text_long":
        return Workload(name, "text", "Llama 7.3M, prompt 256, chosen/rejected 32 tokens, 4 pairs/step",
                        warmup, steps)
    if name == "text_variable":
        return Workload(name, "text", "Llama 7.3M, prompts 16-512, completions 16-256 tokens (uniform), "
                                      "4 pairs/step", warmup, steps + (4 if not quick else 0))
    if name == "vlm":
        return Workload(name, "vlm", "LLaVA: CLIP 224 px / patch 14 (256 image tokens) + Llama 7.3M, "
                                     "prompt 32, completions 48 tokens, 4 pairs/step", warmup, steps)
    if name == "diffusion":
        # 3 steps an epoch: the first epoch is the warm-up (mmalign's caches fill), then 2 timed epochs
        return Workload(name, "diffusion", "tiny SDXL (UNet 1.7M, 8x VAE, 512 px), LoRA rank 4, "
                                           "2 pairs/step", 3, 3 if quick else 6, pairs=2, epoch_steps=3)
    if name == "ddpo":  # see benchmarks/ddpo.py (its module: its peer runs in an environment of its own)
        from benchmarks.ddpo import make_ddpo_workload
        return make_ddpo_workload(warmup, steps)
    if name in ("grpo", "rloo"):  # see benchmarks/online.py
        peer = "GRPOTrainer" if name == "grpo" else "RLOOTrainer"
        return Workload(name, "online", f"Llama 7.3M, {name}: 2 prompts of 64 tokens x 8 completions of 64 "
                                        f"tokens/step, generation included (peer: TRL {peer})",
                        warmup, steps, pairs=2, samples=8)
    if name == "vlm_grpo":  # see benchmarks/vlm_online.py
        return Workload(name, "vlm_online", "LLaVA of vlm, grpo: 2 images + prompts of 32 tokens x 8 completions "
                                            "of 48 tokens/step, generation included (peer: TRL GRPOTrainer)",
                        warmup, steps, pairs=2, samples=8)
    raise ValueError(f"unknown workload '{name}'; known: {', '.join(workload_names())}")


def _lengths(w: Workload, rng: random.Random) -> list[Lengths]:
    n = w.records_count
    if w.name == "text_long":
        return [Lengths(256, 32, 32) for _ in range(n)]
    if w.name == "text_variable":
        return [Lengths(rng.randint(16, 512), rng.randint(16, 256), rng.randint(16, 256)) for _ in range(n)]
    return [Lengths(32, 48, 48, IMAGE_TOKENS) for _ in range(n)]


def visit_order(n: int, total: int, seed: int = SEED) -> list[int]:
    """The first ``total`` of n examples that mmalign's engine visits, epoch after epoch
    (``engine.train.next_examples``: ``randperm(n)`` seeded with ``cfg.seed + epoch``)."""
    import torch

    order: list[int] = []
    epoch = 0
    while len(order) < total:
        order += torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        epoch += 1
    return order[:total]


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(VOCAB - len(SPECIALS))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")
    core.add_special_tokens(["<image>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>", unk_token="<unk>",
                                  extra_special_tokens={"image_token": "<image>"})
    tok.save_pretrained(directory)
    return tok


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(VOCAB - len(SPECIALS))}" for _ in range(n))


def _write_images(directory: Path, n: int, rng: random.Random) -> list[str]:
    """Smooth random colour fields, 224 x 224 (what the CLIP processor expects, no resize)."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    names = []
    gen = np.random.default_rng(rng.randrange(2**31))
    for i in range(n):
        coarse = gen.integers(0, 256, size=(7, 7, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((224, 224), Image.BILINEAR)
        names.append(f"img-{i:04d}.png")
        image.save(directory / names[-1])
    return names


def _build_model(w: Workload, tok, model_dir: Path) -> dict:
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    torch.manual_seed(SEED)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if w.kind in ("text", "online"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA, **ids))
        lm = model.model
    else:
        config = LlavaConfig(vision_config=CLIPVisionConfig(**CLIP), text_config=LlamaConfig(**LLAMA, **ids),
                             image_token_id=tok.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
        model = LlavaForConditionalGeneration(config)
        lm = model.model.language_model
    model.save_pretrained(model_dir, safe_serialization=True)
    count = lambda m: sum(p.numel() for p in m.parameters())
    params = {"blocks": sum(count(layer) for layer in lm.layers) + count(lm.norm),
              "embeddings": count(lm.embed_tokens), "lm_head": count(model.lm_head)}
    if w.kind in ("vlm", "vlm_online"):
        params["vision"] = count(model.model.vision_tower)
        params["projector"] = count(model.model.multi_modal_projector)
    params["total"] = count(model)
    return params


def _save_processor(tok, model_dir: Path) -> None:
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    images = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(model_dir)


def build(w: Workload, root: str | Path) -> Workload:
    """Write the model (weights, tokenizer / processor) and the data of ``w`` under ``root``; check
    that every record tokenizes to exactly its intended lengths. Returns ``w`` filled in."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # "Writing model shards" bars in the benchmark's output
    root = Path(root)
    w.root = str(root)
    model_dir, data_dir = root / "model", root / "data"
    model_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    if w.kind in ("diffusion", "ddpo"):
        from benchmarks.ddpo import build_ddpo
        from benchmarks.diffusion import build_diffusion
        w.params = build_diffusion(w, root) if w.kind == "diffusion" else build_ddpo(w)
        w.order = visit_order(w.records_count, w.total_steps * w.pairs)
        (root / "workload.json").write_text(json.dumps(w.to_json()))
        return w
    rng = random.Random(f"{SEED}-{w.name}")
    tok = build_tokenizer(model_dir)
    if w.kind in ("vlm", "vlm_online"):
        _save_processor(tok, model_dir)
    w.params = _build_model(w, tok, model_dir)
    if w.kind in ("online", "vlm_online"):
        from benchmarks.online import online_lengths, write_online_data
        from benchmarks.vlm_online import vlm_online_lengths, write_vlm_online_data

        if w.kind == "online":
            w.records = online_lengths(w)
            write_online_data(w, tok, rng, _words)
        else:
            w.records = vlm_online_lengths(w)
            write_vlm_online_data(w, tok, rng, _words, _write_images)
        w.order = visit_order(len(w.records), w.total_steps * w.pairs)
        (root / "workload.json").write_text(json.dumps(w.to_json()))
        return w
    w.records = _lengths(w, rng)
    images = _write_images(data_dir / "images", len(w.records), rng) if w.kind == "vlm" else []
    rows = []
    for i, n in enumerate(w.records):
        row = {"id": f"r{i}", "prompt": _words(rng, n.prompt),
               "chosen": " " + _words(rng, n.chosen - 1) + "<eos>",
               "rejected": " " + _words(rng, n.rejected - 1) + "<eos>"}
        if w.kind == "vlm":
            row["prompt"] = "<image> " + row["prompt"]
            row["image"] = f"images/{images[i]}"
        rows.append(row)
    _check_lengths(tok, rows, w.records)
    Path(w.data_file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    w.order = visit_order(len(rows), w.total_steps * w.pairs)
    (root / "workload.json").write_text(json.dumps(w.to_json()))
    return w


def _check_lengths(tok, rows: list[dict], lengths: list[Lengths]) -> None:
    for row, n in zip(rows, lengths):
        prompt = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        chosen = tok(row["chosen"], add_special_tokens=False)["input_ids"]
        rejected = tok(row["rejected"], add_special_tokens=False)["input_ids"]
        want_prompt = n.prompt + (1 if n.image_tokens else 0)  # one <image> placeholder before expansion
        if (prompt, len(chosen), len(rejected)) != (want_prompt, n.chosen, n.rejected) or \
                chosen[-1] != tok.eos_token_id or tok.unk_token_id in chosen + rejected:
            raise AssertionError(f"record {row['id']}: token counts {(prompt, len(chosen), len(rejected))}, "
                                 f"expected {(want_prompt, n.chosen, n.rejected)}")


def peer_records(w: Workload) -> list[dict]:
    """The records in mmalign's epoch order, for the peer's sequential sampler."""
    rows = [json.loads(line) for line in Path(w.data_file).read_text().splitlines()]
    return [rows[i] for i in w.order]


def step_lengths(w: Workload) -> list[list[Lengths]]:
    """The records of each optimizer step, in the order both trainers take them."""
    ordered = [w.records[i] for i in w.order]
    return [ordered[s * w.pairs:(s + 1) * w.pairs] for s in range(w.total_steps)]
