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
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Show the tracebacks of plugins that failed to load.")
TRACKING_OPTION = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then mlflow.yaml).")


@contextlib.contextmanager
def user_errors():
    """Print AttnbenchErrors as one clear message (no traceback) and exit with their code."""
    try:
        yield
    except AttnbenchError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def report_plugin_problems(host, verbose: bool = False) -> None:
    """Warn about plugins that failed or clashed (with tracebacks under ``--verbose``)."""
    for warning in host.warnings:
        err_console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
    for failure in host.failures:
        err_console.print(f"[yellow]warning: plugin {failure.plugin} failed ({failure.stage}): {failure.error}[/yellow]",
                          highlight=False)
        if verbose and failure.traceback:
            err_console.print(failure.traceback, highlight=False, markup=False)
    if host.failures and not verbose:
        err_console.print("[dim](--verbose shows their tracebacks)[/dim]")
