"""mmalign's text plugin: preference optimization of causal language models.

Registered through the ``mmalign`` entry-point group, exactly as a third-party plugin would be.
"""

from mmalign.hookspecs import hookimpl


def _quiet_transformers() -> None:
    # Per-file "Loading weights" bars drown the training progress bar on tiny models.
    from transformers.utils import logging

    logging.disable_progress_bar()


@hookimpl
def mmalign_register_rewards(register):
    from mmalign_text.reward import TextReward

    _quiet_transformers()

    register("text", TextReward)
    from mmalign_text.reward_model import RewardModel

    register("reward_model", RewardModel)


@hookimpl
def mmalign_register_losses(register):
    from mmalign_text.reward_model import BRADLEY_TERRY
    from mmalign_text.sweep import UNLIKELIHOOD

    from mmalign_text.kto_loss import KTO

    register(BRADLEY_TERRY)
    register(UNLIKELIHOOD)
    register(KTO)


@hookimpl
def mmalign_register_scorers(register):
    from mmalign_text.best_of_n import RewardModelScorer, sentiment_scorer

    register("reward_model", RewardModelScorer)
    register("sentiment", sentiment_scorer)
    from mmalign_text.addition import addition_exact_scorer

    register("addition_exact", addition_exact_scorer)


@hookimpl
def mmalign_register_demos(register):
    def run_text_demo(out_dir, **options):
        from mmalign_text.demo import run_demo

        return run_demo(out_dir, **options)

    def run_text_frontier(out_dir, **options):
        from mmalign_text.sweep import run_sweep

        return run_sweep(out_dir, **options)

    register("text", run_text_demo)
    register("text-frontier", run_text_frontier)

    def run_rl_demo(out_dir, **options):
        from mmalign_text.rl_demo import run_demo

        return run_demo(out_dir, **options)

    register("rl", run_rl_demo)


@hookimpl
def mmalign_register_commands(register):
    from mmalign_text.sweep import add_sweep_arguments, sweep_command

    register("sweep", sweep_command, arguments=add_sweep_arguments,
             help="the reward-KL frontier of the text demo: DPO at several betas, the paper's "
                  "baselines, PPO, PPO-GT, GRPO, ReMax, RLOO and Best-of-N; writes frontier.json "
                  "and frontier.png")


@hookimpl
def mmalign_register_evaluators(register):
    from mmalign_text.addition import addition_accuracy

    register("addition_accuracy", addition_accuracy, modalities=("text",))
