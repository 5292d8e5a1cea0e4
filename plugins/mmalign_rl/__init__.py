"""Online RL from feedback: the group-baseline family (GRPO, Dr. GRPO, DAPO, GSPO, RLOO), ReMax and
REINFORCE++ on the plugin's ``sample``. ``advantages`` holds the pure advantage estimators (GAE for
PPO too), ``policy_losses`` the per-token policy losses, KL estimators and aggregations, ``source``
the online batch source, ``algorithms`` the group family, ``reinforce`` ReMax and REINFORCE++.
Shapes: C contexts (prompts), G responses per context, U units (tokens) per response."""

from mmalign.hookspecs import hookimpl


@hookimpl
def mmalign_register_algorithms(register):
    from mmalign_rl.algorithms import ALGORITHMS
    from mmalign_rl.reinforce import ALGORITHMS as REINFORCE_ALGORITHMS

    for algorithm in ALGORITHMS + REINFORCE_ALGORITHMS:
        register(algorithm)
