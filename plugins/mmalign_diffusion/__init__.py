"""mmalign's diffusion plugin: Diffusion-DPO (Wallace et al.) for SD 1.5 and SDXL UNets.

Registered through the ``mmalign`` entry-point group, exactly as a third-party plugin would be:
the reward ``diffusion``, the evaluator ``diffusion_accuracy``, the scorers ``brightness`` (the demo
world's gold score), ``clip_preference`` and ``aesthetic`` (image reward models from local paths) and the demos ``diffusion`` and ``diffusion-rl``.
"""

from mmalign.hookspecs import hookimpl


@hookimpl
def mmalign_register_rewards(register):
    from mmalign_diffusion.reward import DiffusionReward

    register("diffusion", DiffusionReward)


@hookimpl
def mmalign_register_losses(register):
    from mmalign_diffusion.mapo import MAPO

    register(MAPO)


@hookimpl
def mmalign_register_scorers(register):
    from mmalign_diffusion.image_scorers import aesthetic_scorer, clip_preference_scorer
    from mmalign_diffusion.world import brightness_scorer

    register("brightness", brightness_scorer)  # the demo world's gold score: a reward for online runs
    register("clip_preference", clip_preference_scorer)  # PickScore-style CLIP preference model
    register("aesthetic", aesthetic_scorer)  # LAION-aesthetics-style CLIP + linear head


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

    def run_diffusion_rl_demo(out_dir, **options):
        from mmalign_diffusion.rl_demo import run_demo

        return run_demo(out_dir, **options)

    register("diffusion-rl", run_diffusion_rl_demo)  # DDPO, GRPO, online Diffusion-DPO
