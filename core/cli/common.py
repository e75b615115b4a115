"""What every command shares: consoles, the user-error handler, common options.

Nothing here imports torch, matplotlib or MLflow: ``attnbench --help`` and argument errors
must answer at once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import AttnbenchError

console = Console()
err_console = Console(stderr=True)

DEFAULT_GRID = Path("experiments/quick.yaml")
PLUGIN_OPTION = typer.Option(None, "--plugin", help="Extra plugin module to load (repeatable), e.g. my_pkg.attention.")
TRACKING_OPTION = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then mlflow.yaml).")


@contextlib.contextmanager
def user_errors():
    """Print AttnbenchErrors as one clear message (no traceback) and exit with their code."""
    try:
        yield
    except AttnbenchError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
