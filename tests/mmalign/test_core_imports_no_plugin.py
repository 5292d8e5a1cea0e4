"""The core never imports a plugin: every feature beyond the engine (losses, metrics, record
formats, modalities) arrives through the ``mmalign`` entry-point group, like a third party's."""

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import mmalign
for info in pkgutil.walk_packages(mmalign.__path__, "mmalign."):
    importlib.import_module(info.name)
print(sorted(m for m in sys.modules if m.startswith("mmalign_")))
"""


def test_importing_every_core_module_imports_no_plugin():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_built_in_features_come_from_their_entry_points():
    from mmalign.plugins import registry

    reg = registry()
    sources = {(kind, name): reg.entry(kind, name).source.split(" ")[0]
               for kind, name in [("losses", "sigmoid"), ("losses", "mpo"), ("evaluators", "reward_accuracy"),
                                  ("callbacks", "plot"), ("datasets", "jsonl"), ("datasets", "json")]}
    assert sources == {("losses", "sigmoid"): "losses", ("losses", "mpo"): "losses",
                       ("evaluators", "reward_accuracy"): "metrics", ("callbacks", "plot"): "metrics",
                       ("datasets", "jsonl"): "formats", ("datasets", "json"): "formats"}
