"""The ``samples`` callback (turned on by ``eval.samples``): each evaluation's samples written to
``output_dir/samples/step-NNNNNNN.jsonl``, one line per prompt, an image response as a PNG beside
it (its file name in the line's ``response``). Trackers get the same samples from the
``trackers`` callback (:func:`log_samples`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmalign.callbacks import Callback


def is_image(value: Any) -> bool:
    return hasattr(value, "save") and hasattr(value, "size")  # a PIL image


class SamplesCallback(Callback):
    def __init__(self, output_dir: Path):
        self.folder = Path(output_dir) / "samples"

    def on_samples(self, step: int, samples: list[dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, sample in enumerate(samples):
            response = sample["response"]
            if is_image(response):
                name = f"step-{step:07d}-{i}.png"
                response.save(self.folder / name)
                response = name
            lines.append(json.dumps({"step": step, "prompt": sample["prompt"], "response": response,
                                     "where": sample["where"]}) + "\n")
        (self.folder / f"step-{step:07d}.jsonl").write_text("".join(lines))


def markdown_table(samples: list[dict]) -> str:
    """Prompt and response as a two-column Markdown table (TensorBoard renders text as Markdown)."""
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", "<br>")

    rows = [f"| {cell(s['prompt'])} | {cell(s['response'])} |" for s in samples]
    return "\n".join(["| prompt | response |", "| --- | --- |", *rows])


def log_samples(accelerator: Any, step: int, samples: list[dict]) -> None:
    """The samples to every tracker that takes them: TensorBoard (text table, images), Weights &
    Biases (a Table, Images), MLflow (a JSON artifact, images)."""
    import numpy as np

    texts = [s for s in samples if not is_image(s["response"])]
    images = [s for s in samples if is_image(s["response"])]
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            writer = tracker.writer
            if texts:
                writer.add_text("samples", markdown_table(texts), step)
            for i, s in enumerate(images):
                writer.add_image(f"samples/{i}", np.asarray(s["response"].convert("RGB")), step, dataformats="HWC")
            writer.flush()
        elif tracker.name == "wandb":
            import wandb

            values = {"samples": wandb.Table(columns=["prompt", "response"],
                                             data=[[str(s["prompt"]), s["response"]] for s in texts])} if texts else {}
            values.update({f"samples/{i}": wandb.Image(s["response"], caption=str(s["prompt"])) for i, s in enumerate(images)})
            tracker.log(values, step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_text("".join(json.dumps({"prompt": s["prompt"], "response": s["response"]}) + "\n" for s in texts),
                            f"samples/step-{step:07d}.jsonl")
            for i, s in enumerate(images):
                mlflow.log_image(s["response"], f"samples/step-{step:07d}-{i}.png")
