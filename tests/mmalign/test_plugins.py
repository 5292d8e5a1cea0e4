import pytest

from mmalign import hookimpl
from mmalign.errors import RegistryError
from mmalign.losses import LossSpec
from mmalign_losses import sigmoid
from mmalign.plugins import build_registry, plugin_manager, registry


def test_builtins_are_registered_with_their_source():
    reg = registry()
    assert {"sigmoid", "ipo", "hinge", "sft"} <= set(reg.names("losses"))
    assert "text" in reg.names("rewards")  # through the entry-point group, like a third party
    assert "mmalign" in reg.entry("rewards", "text").source
    assert reg.entry("losses", "sigmoid").source.startswith("losses (mmalign ")
    assert "jsonl" in reg.names("datasets") and "reward_accuracy" in reg.names("evaluators")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(RegistryError) as e:
        registry().get("losses", "sigmoidd")
    assert "sigmoid" in str(e.value) and "hinge" in str(e.value)


def test_a_later_plugin_overrides_and_adds():
    class Extra:
        @hookimpl
        def mmalign_register_losses(self, register):
            register(LossSpec("sigmoid", sigmoid, summary="overridden"))
            register(LossSpec("mine", sigmoid))

    pm = plugin_manager()
    pm.register(Extra(), name="extra")
    reg = build_registry(pm)
    assert reg.get("losses", "sigmoid").summary == "overridden"
    assert reg.entry("losses", "mine").source == "extra"


def test_blocking_a_plugin(monkeypatch):
    monkeypatch.setenv("MMALIGN_BLOCK_PLUGINS", "text")
    reg = build_registry(plugin_manager())
    assert "text" not in reg.names("rewards")
    assert "sigmoid" in reg.names("losses")
    reg = build_registry(plugin_manager(block=["losses"]))
    assert "sigmoid" not in reg.names("losses")
    assert all(reg.entry("losses", n).source.split(" ")[0] != "losses" for n in reg.names("losses"))


def test_a_broken_plugin_gives_a_clear_error_naming_it():
    class Broken:
        @hookimpl
        def mmalign_register_losses(self, register):
            raise RuntimeError("boom")

    pm = plugin_manager()
    pm.register(Broken(), name="broken")
    with pytest.raises(RegistryError) as e:
        build_registry(pm)
    assert "broken" in str(e.value) and "MMALIGN_BLOCK_PLUGINS=broken" in str(e.value)
