"""The built-in ``metrics`` plugin: the ``plot`` callback and the Pillow plots it draws with."""

from PIL import Image

from mmalign.callbacks import Callback
from mmalign_metrics import PlotCallback
from mmalign_metrics.plotting import bar_chart


def test_plot_callback_draws_the_curves_every_few_logs_and_at_the_end(tmp_path):
    callback = PlotCallback(tmp_path, every=2)
    assert isinstance(callback, Callback)
    callback.on_log(1, {"step": 1, "loss": 0.69, "rewards/accuracies": 0.5})
    assert not callback.path.exists()
    callback.on_log(2, {"step": 2, "loss": 0.6, "rewards/accuracies": 0.7, "eval/loss": 0.65})
    assert callback.path.exists()
    callback.path.unlink()
    callback.on_train_end(callback.rows)
    with Image.open(callback.path) as img:
        assert img.format == "PNG" and img.width > 0


def test_bar_chart_writes_a_png(tmp_path):
    path = tmp_path / "bars.png"
    bar_chart(path, "title", {"reference": 0.3, "policy": 0.2})
    with Image.open(path) as img:
        assert img.format == "PNG"
