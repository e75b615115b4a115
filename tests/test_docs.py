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
