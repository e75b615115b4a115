"""Plugin discovery: entry points of group ``attnbench`` (built-ins included), ``--plugin``
modules, and the ``ATTNBENCH_PLUGINS`` allow-list.

A broken installed plugin is recorded, not fatal; a ``--plugin`` module that fails to import
is a user error (exit 2): a plugin you asked for by name is not optional. One plugin
registers all of its names or none of them, so a clash never leaves half a plugin behind;
on a clash the plugin loaded first keeps the name (built-ins load first).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import sys
import traceback
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from ..errors import BadInputError, PluginError
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
    warnings: list[str] = field(default_factory=list)  # e.g. allow-list entries that match nothing

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
            ],
            "warnings": list(self.warnings),
        }


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def normalize(name: str) -> str:
    """PEP 503 normalisation: ``My_Plugin.x`` and ``my-plugin-x`` name the same distribution."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def allow_list() -> set[str] | None:
    """Third-party plugins named in ATTNBENCH_PLUGINS (comma separated, distribution or
    entry-point names, PEP 503-normalised), or None when unset.

    Built-in plugins always load; an empty value loads only the built-ins."""
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return {normalize(part) for part in raw.split(",") if part.strip()}


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
    in_order: list = []  # modules in load order: on a clash the earlier one keeps the name
    distributions: dict[int, str | None] = {}  # id(module) -> distribution (None for --plugin)

    def add(label: str, loader, *, required: bool = False, distribution: str | None = None) -> None:
        try:
            module = loader()
        except Exception as exc:  # a broken plugin must not take the others down
            if required:
                raise BadInputError(f"{label}: cannot import: {type(exc).__name__}: {exc}") from None
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
        in_order.append(module)
        distributions[id(module)] = distribution
        host.loaded.append(label)

    allowed = allow_list()
    matched: set[str] = set()
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=_entry_point_order):
        dist = ep.dist.name if ep.dist is not None else "?"
        if dist != BUILTIN_DISTRIBUTION and allowed is not None:
            names = {normalize(dist), normalize(ep.name)} & allowed
            if not names:
                continue
            matched |= names
        add(f"{dist} ({ep.value})", ep.load, distribution=None if dist == "?" else dist)
    if allowed:
        for name in sorted(allowed - matched):
            host.warnings.append(f"{ALLOW_LIST_ENV}: {name!r} matches no installed plugin distribution or "
                                 f"entry point of group {ENTRY_POINT_GROUP!r}")
        for registry in (host.attention, host.model, host.task):
            registry.unknown_hint = (f"{ALLOW_LIST_ENV} is set, so only the built-ins and "
                                     f"{', '.join(sorted(allowed))} are loaded")
    elif allowed is not None:
        for registry in (host.attention, host.model, host.task):
            registry.unknown_hint = f"{ALLOW_LIST_ENV} is set but empty, so only the built-ins are loaded"
    for module_name in extra_modules:
        add(f"--plugin ({module_name})", lambda m=module_name: _import_from_cwd(m), required=True)

    # One plugin at a time, all hooks together: its names go in only if every one of them fits.
    for plugin in in_order:
        label = labels[id(plugin)]
        staged: list[tuple[Registry, str, object, dict]] = []
        try:
            for hook_name, kind in HOOK_KINDS.items():
                stage = hook_name
                for impl in getattr(pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is not plugin:
                        continue

                    def register(name, factory, _registry=host.registry(kind), **meta):
                        staged.append((_registry, name, factory, meta))

                    impl.function(register=register)
            stage = "register"
            _check_staged(staged, label)
        except Exception as exc:
            msg = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
            if staged:
                msg += f"; nothing from {label} was registered"
            host.failures.append(PluginFailure(label, stage, msg, traceback.format_exc()))
            continue
        for registry, name, factory, meta in staged:
            origin = provenance_of(plugin, factory, distributions.get(id(plugin)))
            registry.register(name, factory, plugin=label, provenance=origin.describe(), **meta)
    return host


def _check_staged(staged: list, label: str) -> None:
    """Raise the PluginError the first of these registrations would raise (duplicates included)."""
    trial = {id(r): Registry(r.kind, r.base_class) for r, *_ in staged}
    for registry, name, factory, meta in staged:
        if name in registry:
            other = registry.get(name).plugin
            raise PluginError(f"duplicate {registry.kind} name {name!r}: registered by {other} and again by "
                              f"{label}; the first one loaded keeps it (built-ins load first)")
        trial[id(registry)].register(name, factory, plugin=label, **meta)


def _import_from_cwd(module_name: str):
    """Import a ``--plugin`` module; like ``python -m``, the current directory comes first."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(module_name)


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
