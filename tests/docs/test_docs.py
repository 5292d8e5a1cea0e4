"""Docs are code: every hook, protocol member and registered name is documented, the README's and
the plugin guide's and the Python API page's snippets run, nothing that exists is called planned,
and philosophy.md's layout names every module of the core and of the built-in plugins that exist."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from mmalign import hookspecs
from mmalign.plugins import KINDS, registry
from mmalign.protocol import ModalityPlugin
from mmalign.scores import Scores

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
ALL_DOCS = "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md"))) + (REPO / "README.md").read_text()
# What is not built yet (open issues); a line may call only these planned.
NOT_BUILT = ("ppo", "grpo", "remax", "rloo", "reinforce", "online", "ddpo", "control", "cpl", "gymnasium",
             "fsdp", "zero", "deepspeed", "tracker", "wandb", "model card")
PLANNED = re.compile(r"\b(planned|not yet (?:built|implemented|supported|wired)|coming soon)\b", re.I)


def _hook_names() -> list[str]:
    return [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("mmalign_")]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_every_hook_is_documented_in_the_hook_reference():
    text = (DOCS / "plugin-hooks.md").read_text()
    missing = [name for name in _hook_names() if name not in text]
    assert not missing, f"docs/plugin-hooks.md does not document {missing}"


def test_every_protocol_member_is_documented():
    text = (DOCS / "plugin-hooks.md").read_text() + (DOCS / "writing-a-plugin.md").read_text()
    members = [n for n in vars(ModalityPlugin) if not n.startswith("_")]
    missing = [n for n in members if f"`{n}" not in text]
    assert not missing, f"protocol members not documented in plugin-hooks.md / writing-a-plugin.md: {missing}"
    fields = [n for n in Scores.__dataclass_fields__]
    assert not [f for f in fields if f"`{f}" not in text], "every Scores field is documented"


def test_every_registered_name_is_documented():
    reg = registry()
    losses = (DOCS / "losses.md").read_text()
    missing = [n for n in reg.names("losses") if f"`{n}`" not in losses]
    assert not missing, f"docs/losses.md does not document the losses {missing}"
    for kind in KINDS:
        if kind == "losses":
            continue
        undocumented = [n for n in reg.names(kind) if f"`{n}`" not in ALL_DOCS]
        assert not undocumented, f"registered {kind} not named in the docs: {undocumented}"


def test_the_hookspec_docstrings_name_every_built_in():
    reg = registry()
    losses_doc = (DOCS / "losses.md").read_text()
    for kind in KINDS:
        doc = getattr(hookspecs, f"mmalign_register_{kind}").__doc__
        builtin = [n for n in reg.names(kind) if reg.entry(kind, n).source.split(" ")[0] in BUILT_IN_PLUGINS]
        # a whole word: "json" must not pass because the docstring names "jsonl"
        unnamed = [n for n in builtin if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", doc)]
        if kind == "losses" and "docs/losses.md" in doc:
            # the losses hook names the DPO family (two dozen losses) by pointing at docs/losses.md:
            # then that page must name each one the docstring does not
            unnamed = [n for n in unnamed if f"`{n}`" not in losses_doc]
        assert not unnamed, (kind, unnamed)


BUILT_IN_PLUGINS = {"text", "vlm", "diffusion", "losses", "metrics", "formats", "hf_datasets", "runs", "optimizers"}


@pytest.mark.parametrize("path", [DOCS / p for p in sorted(p.name for p in DOCS.glob("*.md"))] + [REPO / "README.md"],
                         ids=lambda p: p.name)
def test_nothing_that_exists_is_called_planned(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if PLANNED.search(line):
            assert any(word in line.lower() for word in NOT_BUILT), \
                f"{path.name}:{number} calls something planned that is not an open issue: {line.strip()}"


@pytest.mark.parametrize("doc", ["README.md", "docs/writing-a-plugin.md", "docs/python-api.md"])
def test_python_snippets_run(doc, tmp_path, monkeypatch):
    """Each ```python block runs as written, from a directory that sees the repo's configs and
    examples (outputs land in tmp_path); blocks of one file share a namespace, in order."""
    blocks = _python_blocks(REPO / doc)
    assert blocks, f"{doc} has no Python snippets"
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__snippet__"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{doc} snippet {number}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{doc} snippet {number} fails: {type(e).__name__}: {e}\n{block}")


def _layout_names(top: str) -> list[str]:
    """The names philosophy.md's layout gives under ``top`` (``mmalign/``): each entry's first
    column, before the description (several names may share one entry: ``a.py, b.py``)."""
    text = (DOCS / "philosophy.md").read_text()
    block = text.split("## Layout as it is today", 1)[1].split("```")[1]
    names, inside = [], False
    for line in block.splitlines():
        if not line.startswith(" "):
            inside = line.startswith(top)
        elif inside and not line.startswith("   "):  # an entry, not a description's next line
            names += re.findall(r"[\w/]+\.py|\w+/", line.strip().split("  ")[0])
    return names


def test_the_layout_in_philosophy_names_every_core_module_and_built_in_plugin():
    listed = _layout_names("mmalign/")
    modules = [p.name for p in (REPO / "mmalign").glob("*.py") if p.name != "__init__.py"] + ["losses/"]
    assert sorted(set(modules) - set(listed)) == [], "core modules missing from docs/philosophy.md's layout"
    assert sorted(set(listed) - set(modules)) == [], "docs/philosophy.md's layout names modules that do not exist"
    text = (DOCS / "philosophy.md").read_text()
    plugins = sorted(p.name for p in (REPO / "plugins").iterdir() if (p / "__init__.py").is_file())
    assert [p for p in plugins if f"plugins/{p}/" not in text] == []

