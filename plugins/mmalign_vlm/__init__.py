"""mmalign's VLM plugin: preference optimization of LLaVA-style vision-language models, mDPO, and
hallucination evaluators (CHAIR, POPE). Registered through the ``mmalign`` entry-point group."""

from mmalign.hookspecs import hookimpl


@hookimpl
def mmalign_register_rewards(register):
    from mmalign_vlm.reward import VLMReward

    register("vlm", VLMReward)


@hookimpl
def mmalign_register_losses(register):
    from mmalign_vlm.losses import MDPO

    register(MDPO)


@hookimpl
def mmalign_register_evaluators(register):
    from mmalign_vlm.evaluators import chair_evaluator, pope_evaluator

    register("chair", chair_evaluator, modalities=("vlm",))  # checked before training starts
    register("pope", pope_evaluator, modalities=("vlm",))


@hookimpl
def mmalign_register_demos(register):
    def run_vlm_demo(out_dir, **options):
        from mmalign_vlm.demo import run_demo

        return run_demo(out_dir, **options)

    register("vlm", run_vlm_demo)

    def run_vlm_rl_demo(out_dir, **options):
        from mmalign_vlm.rl_demo import run_demo

        return run_demo(out_dir, **options)

    register("vlm-rl", run_vlm_rl_demo)


@hookimpl
def mmalign_register_scorers(register):
    from mmalign_vlm.rl_demo import shapes_hallucination_scorer

    register("shapes_hallucination", shapes_hallucination_scorer)
