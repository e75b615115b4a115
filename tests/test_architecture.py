"""The shape of core/: imports flow one way through the stages, with no cycle (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"

# Stages in flow order; a module may import its own stage and earlier ones, never a later one.
# ``attnbench`` itself only re-exports the plugin API (lazily) and ``hookimpl``.
STAGES = ["api", "plugin_host", "testing", "config", "run", "bench", "compare", "cli"]
API_MODULES = {"attention", "models", "tasks", "data", "errors", "options", "phases", "significance"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["attnbench", *parts])


def stage_of(module: str) -> str:
    parts = module.split(".")[1:]
    return "api" if parts[0] in API_MODULES else parts[0]


def imports_of(path: Path) -> set[str]:
    """Every attnbench module ``path`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("attnbench"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("attnbench"))
    modules = {module_name(p) for p in CORE.rglob("*.py")}
    me = module_name(path)
    # a submodule importing its own package (``from . import sibling``) is how packages work
    return {m for m in found if m in modules and m != "attnbench" and not me.startswith(m + ".")}


GRAPH = {module_name(p): imports_of(p) for p in sorted(CORE.rglob("*.py")) if module_name(p) != "attnbench"}


def plugin_imports_of(path: Path) -> list[str]:
    """``attnbench.plugins...`` modules that ``path`` imports (absolute imports only: core has
    no relative path to plugins/)."""
    tree = ast.parse(path.read_text())
    names = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level]
    names += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    return [n for n in names if n == "attnbench.plugins" or n.startswith("attnbench.plugins.")]


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_imports_no_plugin(path):
    """Core never names a built-in plugin: plugins declare what core needs (docs/architecture.md)."""
    assert not plugin_imports_of(path), f"{path.relative_to(CORE)} imports {plugin_imports_of(path)}"


def test_every_core_module_belongs_to_a_stage():
    assert {stage_of(m) for m in GRAPH} <= set(STAGES)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_flow(module):
    rank = STAGES.index(stage_of(module))
    later = sorted(m for m in GRAPH[module] if STAGES.index(stage_of(m)) > rank)
    assert not later, f"{module} ({stage_of(module)}) imports later stages: {later}"


def test_no_import_cycle():
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for dep in GRAPH.get(module, ()):
            if dep == module:
                continue
            if seen.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else path + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in seen:
                visit(dep, path + [dep])
        seen[module] = 2

    for module in GRAPH:
        if module not in seen:
            visit(module, [module])


def test_the_cli_starts_without_torch_or_matplotlib():
    code = "import sys, attnbench.cli; print(sorted(m for m in ('torch', 'matplotlib', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _string_literals(path: Path):
    """(line, text) of every string constant in ``path`` except docstrings (prose may name a tag)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_only_the_run_record_spells_an_attnbench_tag():
    """Tags are named through attnbench.run.record (Tag, child_tags, tag()); a hand-spelled
    ``"attnbench.task"`` would silently diverge when a tag is renamed."""
    from attnbench.run.record import PREFIX, Tag

    short = sorted((v.removeprefix(PREFIX) for k, v in vars(Tag).items() if k.isupper()), key=len, reverse=True)
    # ``attnbench.attention.Attention`` (a module path) is not a tag: no dot or word may follow
    spelled = re.compile(rf"(?<![\w.]){re.escape(PREFIX)}(?:{'|'.join(short)})(?![\w.])")
    record = CORE / "run" / "record.py"
    found = []
    for folder in ("core", "plugins", "tests", "benchmarks"):
        for path in sorted((CORE.parent / folder).rglob("*.py")):
            if path == record:
                continue
            found += [f"{path.relative_to(CORE.parent)}:{line}: {text!r}"
                      for line, text in _string_literals(path) if spelled.search(text)]
    assert not found, "tag names spelled outside core/run/record.py:\n" + "\n".join(found)
