"""Meta-tests (the datasette pattern): every hook is documented and tested, every CLI command
is in the README."""

import inspect
import re
from pathlib import Path

import pytest

from attnbench.plugin_host import hookspecs
from attnbench.cli import app

REPO = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if getattr(fn, "attnbench_spec", None) is not None]


def test_there_are_hooks():
    assert set(HOOKS) == {"register_attention", "register_models", "register_tasks"}


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    docs = (REPO / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### {hook}\(register\)$", docs, re.M), f"docs/plugins.md has no '### {hook}(register)' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tests = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    assert f"def test_hook_{hook}" in tests, f"no test named test_hook_{hook}"


@pytest.mark.parametrize("command", sorted(c.name or c.callback.__name__ for c in app.registered_commands))
def test_cli_command_is_in_the_readme(command):
    readme = (REPO / "README.md").read_text()
    assert f"attnbench {command}" in readme, f"README.md does not show `attnbench {command}`"


# ---------------------------------------------------------------- built-in plugins and options

from pydantic import BaseModel  # noqa: E402

from attnbench.plugin_host import discover  # noqa: E402

# Where each kind of plugin is documented: one "## <name>" section per registered plugin.
KIND_DOCS = {"attention": "attention.md", "model": "models.md", "task": "tasks.md"}
BUILT_INS = [(kind, reg) for kind in KIND_DOCS for reg in discover().registry(kind)
             if reg.factory.__module__.startswith("attnbench.plugins.")]


def code_words(markdown: str) -> set[str]:
    """Every identifier inside code: fenced blocks and `code spans` (``decode.strategy`` gives
    decode and strategy)."""
    fences = re.findall(r"^```.*?^```", markdown, re.M | re.S)
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    code = fences + re.findall(r"`([^`\n]+)`", prose)
    return {word for span in code for word in re.findall(r"[A-Za-z_]\w*", span)}


def section(markdown: str, name: str) -> str:
    """The text of the ``## name`` section, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(name)}\s*$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    return match.group(1) if match else ""


def option_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel] | None]]:
    """(dotted field path, the nested model it belongs to or None for a top-level field)."""
    out = []
    for name, info in model.model_fields.items():
        out.append((prefix + name, None if not prefix else model))
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out += option_fields(info.annotation, prefix + name + ".")
    return out


def test_every_kind_of_built_in_is_registered():
    assert {kind for kind, _ in BUILT_INS} == set(KIND_DOCS)


@pytest.mark.parametrize("kind, reg", BUILT_INS, ids=[f"{k}-{r.name}" for k, r in BUILT_INS])
def test_built_in_plugin_and_its_options_are_documented(kind, reg):
    """Each built-in has a section in its kind's doc, which names every top-level option; options
    of nested sections (``data.*``, ``decode.*``) may be documented anywhere in that doc."""
    doc = (REPO / "docs" / KIND_DOCS[kind]).read_text()
    own = section(doc, reg.name)
    assert own, f"docs/{KIND_DOCS[kind]} has no '## {reg.name}' section"
    missing = []
    for path, nested in option_fields(reg.factory.Options):
        leaf = path.rsplit(".", 1)[-1]
        if leaf not in code_words(own if nested is None else doc):
            missing.append(path)
    assert not missing, f"docs/{KIND_DOCS[kind]} ({reg.name}) does not document options {missing}"
    listed = (REPO / "docs" / "plugins.md").read_text()
    assert f"`{reg.name}`" in listed, f"docs/plugins.md does not list the built-in {kind} `{reg.name}`"


def test_every_grid_file_field_is_documented():
    from attnbench.config.experiment import ExperimentFile

    doc = code_words((REPO / "docs" / "experiments.md").read_text())
    missing = [path for path, _ in option_fields(ExperimentFile) if path.rsplit(".", 1)[-1] not in doc]
    assert not missing, f"docs/experiments.md does not document {missing}"


def test_every_public_name_is_documented():
    """What ``import attnbench`` offers plugin authors (and its extension points) is in the docs."""
    import attnbench

    docs = code_words("\n".join(p.read_text() for p in (REPO / "docs").glob("*.md")))
    missing = sorted(name for name in attnbench.__all__ if not name.startswith("__") and name not in docs)
    assert not missing, f"public names without documentation: {missing}"
    declared = ["is_baseline", "metric_scale", "significance", "PerExampleScore", "SacrebleuPairedTest",
                "SignificanceTest", "SplitTask", "SplitSizes", "split_size", "make_batch", "batch_plan"]
    assert not [name for name in declared if name not in docs]
