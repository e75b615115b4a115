"""Plugin discovery: entry points of group ``attnbench`` (built-ins included), ``--plugin``
modules, and the ``ATTNBENCH_PLUGINS`` allow-list. Broken plugins are recorded, not fatal."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from ..errors import PluginError
from .provenance import provenance_of
from .registry import Registry

ENTRY_POINT_GROUP = "attnbench"
ALLOW_LIST_ENV = "ATTNBENCH_PLUGINS"
BUILTIN_DISTRIBUTION = "attnbench"

# hook name -> registry kind
HOOK_KINDS = {
    "register_attention": "attention",
    "register_models": "model",
    "register_tasks": "task",
}


@dataclass
class PluginFailure:
    plugin: str
    stage: str  # "import" or the hook name
    error: str
    traceback: str = ""


@dataclass
class PluginHost:
    """Everything discovery found: one registry per kind plus the plugins that failed."""

    attention: Registry
    model: Registry
    task: Registry
    failures: list[PluginFailure] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)

    def registry(self, kind: str) -> Registry:
        return {"attention": self.attention, "model": self.model, "task": self.task}[kind]

    def as_dict(self) -> dict:
        """The JSON shape of ``attnbench plugins --json``."""
        return {
            kind: [
                {"name": r.name, "plugin": r.plugin, "factory": _qualname(r.factory)}
                for r in sorted(self.registry(kind), key=lambda r: r.name)
            ]
            for kind in ("attention", "model", "task")
        } | {
            "failed": [
                {"plugin": f.plugin, "stage": f.stage, "error": f.error} for f in self.failures
            ]
        }


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def allow_list() -> set[str] | None:
    """Third-party plugins named in ATTNBENCH_PLUGINS (comma separated), or None when unset.

    Built-in plugins always load; an empty value loads only the built-ins."""
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def discover(extra_modules: list[str] | tuple[str, ...] = ()) -> PluginHost:
    """Load every plugin and collect what it registers."""
    from ..attention import Attention
    from ..models import ModelFamily
    from ..tasks import Task

    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(
        attention=Registry("attention", Attention),
        model=Registry("model", ModelFamily),
        task=Registry("task", Task),
    )
    labels: dict[int, str] = {}
    distributions: dict[int, str | None] = {}  # id(module) -> distribution (None for --plugin)

    def add(module_name: str, label: str, loader, distribution: str | None = None) -> None:
        try:
            module = loader()
        except Exception as exc:  # a broken plugin must not take the others down
            host.failures.append(
                PluginFailure(label, "import", f"{type(exc).__name__}: {exc}", traceback.format_exc())
            )
            return
        if pm.is_registered(module):
            return
        try:
            pm.register(module, name=label)
        except Exception as exc:
            host.failures.append(PluginFailure(label, "register", f"{type(exc).__name__}: {exc}"))
            return
        labels[id(module)] = label
        distributions[id(module)] = distribution
        host.loaded.append(label)

    allowed = allow_list()
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=_entry_point_order):
        dist = ep.dist.name if ep.dist is not None else "?"
        builtin = dist == BUILTIN_DISTRIBUTION
        if not builtin and allowed is not None and dist not in allowed and ep.name not in allowed:
            continue
        add(ep.value, f"{dist} ({ep.value})", ep.load, None if dist == "?" else dist)
    for module_name in extra_modules:
        add(module_name, f"--plugin ({module_name})", lambda m=module_name: importlib.import_module(m))

    for hook_name, kind in HOOK_KINDS.items():
        registry = host.registry(kind)
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            label = labels.get(id(impl.plugin), impl.plugin_name)

            def register(name, factory, _label=label, _module=impl.plugin, **meta):
                origin = provenance_of(_module, factory, distributions.get(id(_module)))
                registry.register(name, factory, plugin=_label, provenance=origin.describe(), **meta)

            try:
                impl.function(register=register)
            except Exception as exc:
                stage = hook_name
                msg = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                host.failures.append(PluginFailure(label, stage, msg, traceback.format_exc()))
    return host


def _entry_point_order(ep):
    # Built-ins first, so a third-party duplicate is the one reported, then a stable order.
    dist = ep.dist.name if ep.dist is not None else ""
    return (dist != BUILTIN_DISTRIBUTION, dist, ep.name)


_default_host: PluginHost | None = None
_default_key: tuple = ()


def get_host(extra_modules: list[str] | tuple[str, ...] = ()) -> PluginHost:
    """The discovered plugins, cached per set of ``--plugin`` modules and allow-list."""
    global _default_host, _default_key
    key = (tuple(extra_modules), os.environ.get(ALLOW_LIST_ENV))
    if _default_host is None or key != _default_key:
        _default_host = discover(extra_modules)
        _default_key = key
    return _default_host


def reset_cache() -> None:
    global _default_host
    _default_host = None
