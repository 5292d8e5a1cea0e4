"""The online workloads (``grpo``, ``rloo``): mmalign's online algorithms against TRL 1.16's
``GRPOTrainer`` and ``RLOOTrainer``, on the text benchmark's Llama, with one reward function.

Per step: 2 prompts of 64 tokens, G = 8 completions of exactly 64 tokens each (EOS suppressed),
scored by :func:`even_word_share`, one update per rollout, beta 0.04 (k3 KL to a frozen reference
copy whose forward runs every step). Generation is part of the step on both sides.

EOS suppression: the workload's model is saved with ``min_new_tokens = 64`` in its
``generation_config.json``. mmalign's text plugin samples with its decode loop, which reads the
model's generation defaults as ``generate`` does (EOS masked for 64 tokens); TRL
builds its own ``GenerationConfig``, so it gets ``generation_kwargs={"min_new_tokens": 64}``. Both
runners check every step that each completion has exactly 64 tokens (and fail otherwise).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.workloads import Lengths, Workload, peer_records

PROMPT_TOKENS = 64
COMPLETION_TOKENS = 64
SAMPLES = 8  # G completions per prompt
PROMPTS_PER_STEP = 2
BETA = 0.04
LR = 1e-5


def even_word_share(prompts, completions, **columns) -> list[float]:
    """The reward of both trainers: the share of a completion's words ``w<k>`` with k even.
    Cheap and deterministic; (prompts, completions) named as TRL passes them by keyword, and
    mmalign passes them by position."""
    out = []
    for text in completions:
        words = text.split()
        out.append(sum(1 for w in words if w[1:].isdigit() and int(w[1:]) % 2 == 0) / max(len(words), 1))
    return out


def completion_texts(completions: list) -> list[str]:
    """TRL passes a conversational prompt's completions (vlm_grpo) as [{"role": "assistant",
    "content": text}], mmalign passes strings: the text either way, for the one reward function."""
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


def online_lengths(w: Workload) -> list[Lengths]:
    """One record per prompt: ``chosen`` is one completion's length (G of them per prompt)."""
    return [Lengths(PROMPT_TOKENS, COMPLETION_TOKENS, 0) for _ in range(w.records_count)]


def write_online_data(w: Workload, tok, rng, words) -> None:
    """Prompt records (64 words = 64 tokens, checked) and the model's EOS suppression."""
    write_prompt_records(w, tok, [{"prompt": words(rng, n.prompt)} for n in w.records], PROMPT_TOKENS)


def write_prompt_records(w: Workload, tok, rows: list[dict], prompt_tokens: int) -> None:
    """Write the online workload's records after checking that each prompt string is
    ``prompt_tokens`` tokens, and save the model with ``min_new_tokens`` = the completion length
    in its ``generation_config.json`` (EOS masked until then: every completion is that long)."""
    from transformers import GenerationConfig

    for i, row in enumerate(rows):
        n = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        if n != prompt_tokens:
            raise AssertionError(f"prompt {i}: {n} tokens, expected {prompt_tokens}")
    Path(w.data_file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    generation = GenerationConfig.from_pretrained(w.model_dir)
    generation.min_new_tokens = completion_tokens(w)
    generation.save_pretrained(w.model_dir)


def completion_tokens(w: Workload) -> int:
    """Every completion's length in the workload (64 for grpo / rloo, 48 for vlm_grpo)."""
    return w.records[0].chosen


def algorithm(w: Workload) -> str:
    """mmalign's algorithm name, which also picks TRL's trainer: grpo (also vlm_grpo) or rloo."""
    return w.name.removeprefix("vlm_")


def check_full_length(where: str, lengths, expected: int) -> None:
    if any(n != expected for n in lengths):
        raise RuntimeError(f"{where}: completion lengths {sorted(set(lengths))}, expected all "
                           f"{expected} (EOS suppression did not apply)")


# --- mmalign ----------------------------------------------------------------------------------------
def online_config(w: Workload, precision: str, out_dir: str) -> dict:
    """mmalign's online config: the algorithm of ``w`` with G = 8, 64 new tokens (vlm_grpo: 48),
    temperature 1, the benchmark scorer; beta 0.04, full fine-tuning (the VLM's vision tower too,
    as TRL trains everything), reference copy, AdamW, linear schedule."""
    vlm = w.kind == "vlm_online"
    return {
        "output_dir": out_dir, "seed": 0,
        "model": {"reward": "vlm" if vlm else "text", "name_or_path": w.model_dir,
                  "options": {"train_vision_tower": True} if vlm else {}},
        "reference": {"strategy": "copy", "cache": "none"},
        "data": {"train": w.data_file, "max_length": 1024},
        "algorithm": {"name": algorithm(w), "options": {
            "samples_per_prompt": w.samples, "max_new_tokens": completion_tokens(w), "temperature": 1.0,
            "scorers": {"benchmark_even_words": 1.0}}},
        "loss": {"beta": BETA},
        "train": {"max_steps": w.total_steps, "batch_size": w.pairs, "lr": LR,
                  "precision": "bf16" if precision == "bf16" else "no", "log_every": 1,
                  "progress": False, "callbacks": ["benchmark_timer"], "max_grad_norm": 1.0},
        "eval": {"evaluators": []},
    }


def run_mmalign_online(w: Workload, precision: str, out_dir: str, log=print) -> dict:
    from benchmarks.runners import _memory, summarize

    stamps, rows = train_timed(online_config(w, precision, out_dir), {"benchmark_even_words": even_word_share}, log)
    for i, row in enumerate(rows):
        check_full_length(f"mmalign step {i + 1}", [row["completions/mean_length"], row["completions/max_length"]],
                          completion_tokens(w))
    return {**summarize(stamps, w.warmup), **logged_split(rows[w.warmup:]), **_memory()}


def train_timed(config: dict, scorers: dict, log=print, on_step=None) -> tuple[list[float], list[dict]]:
    """``mmalign.train(config)`` with the benchmark's step timer and ``scorers`` ({name: reward
    function}) registered as a plugin would register them; returns each step's end timestamp and
    logged row. ``on_step()`` runs after each step's timestamp."""
    import mmalign
    from benchmarks.runners import StepTimer

    stamps: list[float] = []
    rows: list[dict] = []

    class Timer(StepTimer):
        def on_log(self, step: int, row: dict) -> None:
            super().on_log(step, row)
            rows.append(dict(row))
            if on_step is not None:
                on_step()

    class BenchmarkPlugin:
        @mmalign.hookimpl
        def mmalign_register_callbacks(self, register):
            register("benchmark_timer", lambda output_dir: Timer(stamps))

        @mmalign.hookimpl
        def mmalign_register_scorers(self, register):
            for name, function in scorers.items():
                register(name, lambda function=function: function)

    with mmalign.register(BenchmarkPlugin(), name="benchmarks"):
        mmalign.train(config, log=log, overwrite=True)
    return stamps, rows


def logged_split(rows: list[dict]) -> dict:
    """Median generation and scoring seconds of these logged steps (mmalign's time/generate, time/score)."""
    from benchmarks.timing import median_split

    return median_split({"generate_s": [float(r["time/generate"]) for r in rows],
                         "score_s": [float(r["time/score"]) for r in rows]})


# --- TRL --------------------------------------------------------------------------------------------
def trl_online_args(w: Workload, variant: str, out_dir: str, device: str):
    """GRPOConfig / RLOOConfig: 2 prompts x 8 generations per step (per_device_train_batch_size
    counts completions), 64 new tokens with EOS suppressed, beta 0.04, one update per rollout, HF
    generate (no vLLM); "default": TRL's bf16 autocast + gradient checkpointing, "fp32": both off."""
    from trl import GRPOConfig, RLOOConfig

    length = completion_tokens(w)
    kwargs = dict(output_dir=out_dir, per_device_train_batch_size=w.pairs * w.samples, num_generations=w.samples,
                  max_completion_length=length, generation_kwargs={"min_new_tokens": length},
                  temperature=1.0, beta=BETA, num_iterations=1, steps_per_generation=1, use_vllm=False,
                  max_steps=w.total_steps, learning_rate=LR, max_grad_norm=1.0, report_to="none",
                  save_strategy="no", disable_tqdm=True, seed=0, shuffle_dataset=False, logging_steps=1,
                  use_cpu=device == "cpu")
    if variant == "fp32":
        kwargs.update(bf16=False, gradient_checkpointing=False)
    elif variant != "default":
        raise ValueError(f"unknown TRL variant {variant!r}")
    return (GRPOConfig if algorithm(w) == "grpo" else RLOOConfig)(**kwargs)


def _trl_inputs(w: Workload) -> tuple:
    """(model, processing class or None, dataset in mmalign's order, prompt tokens per row)."""
    if w.kind == "vlm_online":
        from benchmarks.vlm_online import trl_vlm_inputs

        n = w.records[0]
        return (*trl_vlm_inputs(w), n.image_tokens + n.prompt)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    dataset = Dataset.from_list([{"prompt": r["prompt"]} for r in peer_records(w)])
    return AutoModelForCausalLM.from_pretrained(w.model_dir), None, dataset, PROMPT_TOKENS


def run_trl_online(w: Workload, variant: str, out_dir: str, device: str) -> dict:
    from transformers import TrainerCallback
    from trl import GRPOTrainer, RLOOTrainer

    from benchmarks.runners import _memory, _sync, summarize
    from benchmarks.timing import median_split as _split

    stamps: list[float] = []
    spent = {"generate_s": 0.0, "score_s": 0.0}
    split: dict[str, list[float]] = {"generate_s": [], "score_s": []}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            stamps.append(time.perf_counter())
            for k in split:
                split[k].append(spent[k])
                spent[k] = 0.0

    model, processor, dataset, prompt_tokens = _trl_inputs(w)
    generate, eos = model.generate, model.generation_config.eos_token_id

    def timed_generate(*args, **kwargs):  # TRL calls the unwrapped model's generate: time and check it
        start = time.perf_counter()
        out = generate(*args, **kwargs)
        spent["generate_s"] += time.perf_counter() - start
        width = kwargs["input_ids"].shape[1]
        if width != prompt_tokens or not bool(kwargs["attention_mask"].all()):
            raise RuntimeError(f"TRL generate: prompts of {width} tokens (with padding), expected {prompt_tokens}")
        new = out[:, width:]
        ends = (new == eos).any(-1).tolist()
        check_full_length("TRL generate", [new.shape[1] if not e else -1 for e in ends], completion_tokens(w))
        return out

    def reward(prompts, completions, **kwargs):  # the same function as mmalign's, timed
        start = time.perf_counter()
        values = even_word_share(prompts, completion_texts(completions))
        spent["score_s"] += time.perf_counter() - start
        return values

    reward.__name__ = "even_word_share"
    model.generate = timed_generate
    trainer_class = GRPOTrainer if algorithm(w) == "grpo" else RLOOTrainer
    trainer = trainer_class(model=model, reward_funcs=reward, args=trl_online_args(w, variant, out_dir, device),
                            train_dataset=dataset, processing_class=processor, callbacks=[Timer()])
    trainer.train()
    timed = {k: v[w.warmup:] for k, v in split.items()}
    return {**summarize(stamps, w.warmup), **_split(timed), **_memory()}
