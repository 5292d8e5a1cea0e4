"""Online RL from feedback: the group-baseline family (GRPO, Dr. GRPO, DAPO, GSPO, RLOO), ReMax and
REINFORCE++ and PPO (``ppo``: a critic, GAE) on the plugin's ``sample``. ``advantages`` holds the pure advantage estimators (GAE for
PPO too), ``policy_losses`` the per-token policy losses, KL estimators and aggregations, ``source``
the online batch source, ``algorithms`` the group family, ``reinforce`` ReMax and REINFORCE++,
``online_dpo`` any pair loss of the registry on sampled (best, worst) pairs, ``ddpo`` DDPO's
per-prompt stat tracking with PPO-clip per unit (denoising steps, for diffusion).
Shapes: C contexts (prompts), G responses per context, U units (tokens) per response."""

from mmalign.hookspecs import hookimpl


@hookimpl
def mmalign_register_algorithms(register):
    from mmalign_rl.algorithms import ALGORITHMS
    from mmalign_rl.ddpo import ALGORITHMS as DDPO_ALGORITHMS
    from mmalign_rl.online_dpo import ALGORITHMS as ONLINE_DPO_ALGORITHMS
    from mmalign_rl.ppo import ALGORITHMS as PPO_ALGORITHMS
    from mmalign_rl.reinforce import ALGORITHMS as REINFORCE_ALGORITHMS

    for algorithm in ALGORITHMS + REINFORCE_ALGORITHMS + PPO_ALGORITHMS + ONLINE_DPO_ALGORITHMS + DDPO_ALGORITHMS:
        register(algorithm)


@hookimpl
def mmalign_register_evaluators(register):
    from mmalign_rl.evaluate import online_rewards

    register("online_rewards", online_rewards)
