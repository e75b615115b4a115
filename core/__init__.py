"""attnbench: compare attention mechanisms with each other and with RNN baselines.

Plugin authors need ``hookimpl`` and the base classes re-exported here. The base classes
load on first use (PEP 562), so ``import attnbench`` and the CLI's ``--help`` stay free of
torch.
"""

from importlib import import_module

from .plugin_host.hookspecs import hookimpl

__version__ = "0.1.0"

# public name -> module that defines it (the plugin API modules: attention, models, tasks, phases)
_LAZY = {
    "Attention": "attention", "AttentionMaps": "attention", "NoOptions": "attention",
    "capture_attention_maps": "attention",
    "ModelDims": "models", "ModelFamily": "models", "TaskIO": "models",
    "Batch": "tasks", "Evaluation": "tasks", "ExampleTokens": "tasks", "Task": "tasks", "SplitTask": "tasks", "SplitSizes": "tasks",
    "phase": "phases",
}
__all__ = [*sorted(_LAZY), "hookimpl", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
