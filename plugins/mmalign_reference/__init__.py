"""The built-in reference plugin (entry point ``reference`` of the ``mmalign`` group): where the
reference scores s_ref come from. It registers the strategies ``reference.strategy`` names
(``auto``, ``copy``, ``disable_adapters``) and ``cache``, which ``reference.cache`` (memory |
disk) wraps around the strategy (hook ``mmalign_register_references``).

    strategies.py   a frozen copy, the policy with its adapters off, and the auto choice
    cache.py        reference scores computed once per training example and reused
"""

from mmalign.hookspecs import hookimpl


@hookimpl
def mmalign_register_references(register) -> None:
    from mmalign_reference.cache import cache_reference
    from mmalign_reference.strategies import check_disable_adapters, registered

    register("auto", registered("auto"))
    register("copy", registered("copy"))
    register("disable_adapters", registered("disable_adapters"), check=check_disable_adapters)
    register("cache", cache_reference, wraps=True)  # what reference.cache applies, not a strategy
