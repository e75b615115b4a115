"""Named registries of plugin-provided factories, fed by the ``register`` callables of the hooks."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInputError, PluginError


@dataclass(frozen=True)
class Registration:
    """One registered factory and the plugin that registered it."""

    kind: str
    name: str
    factory: Any
    plugin: str  # "distribution (module)" or just the module for --plugin / built-in sources
    meta: dict = field(default_factory=dict)
    provenance: str = ""  # "<distribution> <version>[ source <hash>]" (plugin_host/provenance.py)


class Registry:
    """Name -> factory for one kind (attention, model, task); rejects duplicates and wrong types."""

    def __init__(self, kind: str, base_class: type | None = None):
        self.kind = kind
        self.base_class = base_class
        self._items: dict[str, Registration] = {}
        self.unknown_hint = ""  # said after an unknown name (e.g. that an allow-list is set)

    def register(self, name: str, factory: Any, *, plugin: str, provenance: str = "", **meta) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"{plugin}: {self.kind} name {name!r} must be a Python identifier")
        if name in self._items:
            other = self._items[name].plugin
            raise PluginError(
                f"duplicate {self.kind} name {name!r}: registered by {other} and again by {plugin}"
            )
        if self.base_class is not None and not (
            isinstance(factory, type) and issubclass(factory, self.base_class)
        ):
            raise PluginError(
                f"{plugin}: {self.kind} {name!r} must be a subclass of "
                f"{self.base_class.__module__}.{self.base_class.__qualname__}, got {factory!r}"
            )
        self._items[name] = Registration(self.kind, name, factory, plugin, dict(meta), provenance)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Registration:
        """Look a name up; unknown names raise a BadInputError with the valid choices."""
        try:
            return self._items[name]
        except KeyError:
            message = unknown_name_message(self.kind, name, self.names())
            raise BadInputError(message + (f" ({self.unknown_hint})" if self.unknown_hint else "")) from None


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    msg = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(str(name), valid, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return msg + f"; valid: {', '.join(valid) or '(none registered)'}"
