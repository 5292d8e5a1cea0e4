"""The ``plot`` callback: training curves as a PNG, redrawn as the run goes."""

from __future__ import annotations

from pathlib import Path

from mmalign.callbacks import Callback
from mmalign_metrics.plotting import plot_panels


class PlotCallback(Callback):
    """Writes ``training_curves.png`` (loss, reward accuracy, margins over steps; online: loss,
    reward of the samples, KL, response length) at the end of training and every few logs, so a
    long run always has a current picture."""

    def __init__(self, output_dir: Path, every: int = 10):
        self.path = Path(output_dir) / "training_curves.png"
        self.every = every
        self.rows: list[dict] = []

    def on_log(self, step: int, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) % self.every == 0:
            self.on_train_end(self.rows)

    def on_train_end(self, history: list[dict]) -> None:
        def series(key: str, label: str | None = None) -> dict:
            pts = [(r["step"], r[key]) for r in history if key in r]
            return {label or key: ([p[0] for p in pts], [p[1] for p in pts])} if pts else {}

        if any("rewards/mean" in r for r in history):  # an online run
            panels = {
                "loss": series("loss", "train"),
                "reward of sampled responses": {**series("rewards/mean", "mean"), **series("rewards/std", "std")},
                "KL to the reference": series("kl", "kl"),
                "response length": series("completions/mean_length", "mean"),
                "policy entropy": series("entropy", "entropy"),
            }
            y = {"loss": "the algorithm's loss", "reward of sampled responses": "weighted scorer reward",
                 "KL to the reference": "nats per token", "response length": "tokens (mean)",
                 "policy entropy": "nats per sampled token"}
        else:
            panels = {
                "loss": {**series("loss", "train"), **series("eval/loss", "eval")},
                "reward accuracy": {**series("rewards/accuracies", "train"),
                                    **series("eval/reward_accuracy", "eval")},
                "reward margin": {**series("rewards/margins", "train"), **series("eval/margin", "eval")},
            }
            y = {"loss": "loss", "reward accuracy": "share of pairs with r(chosen) > r(rejected)",
                 "reward margin": "r(chosen) - r(rejected), mean"}
        panels = {name: lines for name, lines in panels.items() if lines}
        plot_panels(self.path, panels, title="mmalign training curves",
                    axes={name: ("optimizer step", y[name]) for name in panels})
