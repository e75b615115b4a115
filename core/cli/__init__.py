"""The ``attnbench`` command line (entry point ``attnbench.cli:main``)."""

from .app import app, main

__all__ = ["app", "main"]
