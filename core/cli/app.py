"""The ``attnbench`` command line: run grids, list plugins, serve the MLflow UI, bench, compare.

Each command lives in a module of its own; this one only assembles them. Commands import
their stage (torch, MLflow, matplotlib) when they run, so ``--help`` answers at once.
"""

from __future__ import annotations

import typer

from .bench import bench
from .compare import compare
from .plugins import plugins
from .run import run
from .stale import stale
from .ui import ui

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
