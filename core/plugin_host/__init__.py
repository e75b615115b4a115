"""The plugin host: the hook specs, the registries, and discovery of built-in and third-party plugins.

Discovery (entry points, ``importlib.metadata``) loads on first use (PEP 562): ``import
attnbench`` needs only ``hookspecs`` for ``hookimpl``, and ``attnbench --help`` stays quick.
"""

from importlib import import_module

__all__ = ["PluginFailure", "PluginHost", "allow_list", "discover", "get_host", "reset_cache"]


def __getattr__(name: str):
    if name in __all__:
        value = getattr(import_module(".discovery", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
