"""Online RL from feedback: the group-baseline family (GRPO, Dr. GRPO, DAPO, GSPO, RLOO) on the
plugin's ``sample``. ``advantages`` holds the pure advantage estimators (ReMax, REINFORCE++ and GAE
for PPO too), ``policy_losses`` the per-token policy losses, KL estimators and aggregations,
``source`` the online batch source, ``algorithms`` what is registered. Shapes: C contexts (prompts), G responses per context,
U units (tokens) per response."""

from mmalign.hookspecs import hookimpl


@hookimpl
def mmalign_register_algorithms(register):
    from mmalign_rl.algorithms import ALGORITHMS

    for algorithm in ALGORITHMS:
        register(algorithm)
