"""The whole plugin surface of attnbench: one hook per kind of thing a plugin can add.

Each hook receives a ``register(name, factory, **meta)`` callable. The host owns the
collection: it rejects duplicate names and remembers which plugin registered what.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("attnbench")
hookimpl = HookimplMarker("attnbench")


@hookspec
def register_attention(register):
    """Register attention variants: ``register(name, AttentionSubclass)``."""


@hookspec
def register_models(register):
    """Register model families: ``register(name, ModelFamilySubclass)``."""


@hookspec
def register_tasks(register):
    """Register tasks: ``register(name, TaskSubclass)``."""
