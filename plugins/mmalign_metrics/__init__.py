"""The built-in metrics plugin (entry point ``metrics`` of the ``mmalign`` group): the
``reward_accuracy`` evaluator, the ``plot``, ``trackers`` and ``samples`` training callbacks and the small
Pillow plots (:mod:`mmalign_metrics.plotting`) that demos, sweeps and benchmarks draw with."""

from mmalign.hookspecs import hookimpl
from mmalign_metrics.plot_callback import PlotCallback
from mmalign_metrics.reward_accuracy import reward_accuracy
from mmalign_metrics.samples import SamplesCallback
from mmalign_metrics.trackers import TrackerCallback, check_report_to


@hookimpl
def mmalign_register_evaluators(register):
    register("reward_accuracy", reward_accuracy)


@hookimpl
def mmalign_register_callbacks(register):
    register("plot", PlotCallback)
    register("trackers", TrackerCallback, check=check_report_to, implied_by="train.report_to")
    register("samples", SamplesCallback, implied_by="eval.samples")  # output_dir/samples/


__all__ = ["PlotCallback", "SamplesCallback", "TrackerCallback", "reward_accuracy"]
