"""mmalign's diffusion plugin: Diffusion-DPO (Wallace et al.) for SD 1.5 and SDXL UNets.

Registered through the ``mmalign`` entry-point group, exactly as a third-party plugin would be:
the reward ``diffusion``, the evaluator ``diffusion_accuracy`` and the demo ``diffusion``.
"""

from mmalign.hookspecs import hookimpl


def _quiet() -> None:
    # Per-component "Loading weights" bars drown the training progress bar on tiny models.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


@hookimpl
def mmalign_register_rewards(register):
    from mmalign_diffusion.reward import DiffusionReward

    _quiet()
    register("diffusion", DiffusionReward)


@hookimpl
def mmalign_register_losses(register):
    from mmalign_diffusion.mapo import MAPO

    register(MAPO)


@hookimpl
def mmalign_register_evaluators(register):
    from mmalign_diffusion.evaluate import diffusion_accuracy

    register("diffusion_accuracy", diffusion_accuracy, modalities=("diffusion",))  # checked before training


@hookimpl
def mmalign_register_demos(register):
    def run_diffusion_demo(out_dir, **options):
        from mmalign_diffusion.demo import run_demo

        return run_demo(out_dir, **options)

    register("diffusion", run_diffusion_demo)
