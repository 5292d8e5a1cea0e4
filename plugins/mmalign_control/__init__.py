"""mmalign's control plugin: preferences over behaviour segments (Contrastive Preference Learning,
Hejna et al. 2023) for policies on observations and actions.

Registered through the ``mmalign`` entry-point group like any third-party plugin: the reward
``control`` (MLP policies with a tanh-squashed Gaussian or a categorical head; the score of a
segment is sum_t log pi(a_t | s_t)), the record formats ``npz`` and ``minari`` (segments cut from a
local Minari dataset), the evaluator ``control_return``
(gymnasium rollouts of the mean action) and the demo ``control`` (CPL against behaviour cloning on
Pendulum-v1). The ``cpl`` loss itself lives with the other losses (mmalign_losses). See
docs/control.md.
"""

from mmalign.hookspecs import hookimpl
from mmalign_control.policy import ControlPolicy, PolicyConfig, load_policy, save_policy


@hookimpl
def mmalign_register_rewards(register):
    from mmalign_control.reward import ControlReward

    register("control", ControlReward)


@hookimpl
def mmalign_register_datasets(register):
    from mmalign_control.minari_data import SCHEME, read_minari
    from mmalign_control.npz import read_npz

    register("npz", read_npz, suffixes=(".npz",))
    register("minari", read_minari, schemes=(SCHEME,))  # local Minari datasets: minari://ID?pairs=N


@hookimpl
def mmalign_register_evaluators(register):
    from mmalign_control.evaluate import control_return

    register("control_return", control_return, modalities=("control",))  # checked before training


@hookimpl
def mmalign_register_demos(register):
    def run_control_demo(out_dir, **options):
        from mmalign_control.demo import run_demo

        return run_demo(out_dir, **options)

    register("control", run_control_demo)


__all__ = ["ControlPolicy", "PolicyConfig", "load_policy", "save_policy"]
