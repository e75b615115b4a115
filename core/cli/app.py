"""The ``attnbench`` command line: run grids, list plugins, serve the MLflow UI, bench, compare.

Each command lives in a module of its own; this one only assembles them. Commands import
their stage (torch, MLflow, matplotlib) when they run, so ``--help`` answers at once.
"""

from __future__ import annotations

import typer
from typer.core import TyperOption

from .bench import bench
from .compare import compare
from .plugins import plugins
from .run import run
from .stale import stale
from .ui import ui

_display_type_rich = TyperOption.display_type_rich


def _no_type_for_flags(self, ctx):
    # typer 0.2x prints "<bool>" beside every on/off flag (--dry-run <bool>, --help <bool>),
    # which reads as if the flag took a value; flags take none.
    return None if self.is_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _no_type_for_flags

app = typer.Typer(
    help="Compare attention mechanisms with each other and with RNN baselines; results go to MLflow.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
app.command("run")(run)
app.command("plugins")(plugins)
app.command("ui")(ui)
app.command("bench")(bench)
app.command("compare")(compare)
app.command("stale")(stale)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
