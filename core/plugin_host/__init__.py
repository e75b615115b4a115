"""The plugin host: the hook specs, the registries, and discovery of built-in and third-party plugins."""

from .discovery import PluginFailure, PluginHost, allow_list, discover, get_host, reset_cache

__all__ = ["PluginFailure", "PluginHost", "allow_list", "discover", "get_host", "reset_cache"]
