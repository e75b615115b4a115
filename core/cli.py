"""The ``attnbench`` command line: run grids, list plugins, serve the MLflow UI, bench, compare."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli_bench import bench
from .cli_compare import compare
from .errors import AttnbenchError, BadInputError

app = typer.Typer(
    help="Compare attention mechanisms with each other and with RNN baselines; results go to MLflow.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
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
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


@app.command()
def run(
    grid_file: Path = typer.Argument(DEFAULT_GRID, help="Experiment grid YAML.", show_default=True),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: key.path=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded runs and exit."),
    device: Optional[str] = typer.Option(None, "--device", help="Force a device: auto, cpu or cuda (overrides train.device)."),
    tracking_uri: Optional[str] = TRACKING_OPTION,
    plugin: Optional[List[str]] = PLUGIN_OPTION,
):
    """Train every pairing of a grid (default: experiments/quick.yaml) and log it to MLflow."""
    from .config import expand_grid, load_experiment
    from .plugin_host import get_host
    from .tracking import artifact_root, load_tracking_config, resolve_tracking_uri

    with user_errors():
        if device not in (None, "auto", "cpu", "cuda"):
            raise BadInputError(f"--device {device!r}: valid: auto, cpu, cuda")
        if not grid_file.exists() and grid_file == DEFAULT_GRID:
            raise BadInputError(f"{grid_file}: not found. Run from the attnbench checkout, or pass a grid file: attnbench run path/to/grid.yaml")
        overrides = list(set_ or [])
        experiment, raw = load_experiment(grid_file, overrides)
        host = get_host(plugin or [])
        for failure in host.failures:
            err_console.print(f"[yellow]warning: plugin {failure.plugin} failed ({failure.stage}): {failure.error}[/yellow]")
        specs = expand_grid(experiment, host, source=str(grid_file))
        if dry_run:
            _print_dry_run(experiment, specs)
            return
        tracking = load_tracking_config()
        uri = resolve_tracking_uri(tracking_uri, tracking)
        grid_text = _grid_text(grid_file, raw, overrides)
        from .runner import GridRunner, summary_tables

        runner = GridRunner(experiment, specs, host=host, tracking_uri=uri, artifact_root_uri=artifact_root(tracking),
                            grid_text=grid_text, grid_source=str(grid_file), overrides=overrides, console=console,
                            device=device)
        console.print(f"[bold]{experiment.name}[/bold]: {len(specs)} runs -> MLflow experiment "
                      f"'{experiment.name}' at {uri}")
        try:
            outcomes = runner.run()
        except KeyboardInterrupt:
            err_console.print("\n[yellow]interrupted: the current run and the grid's parent run are marked KILLED; "
                              "re-run the same command to continue (finished runs are skipped).[/yellow]")
            raise typer.Exit(130) from None
        for table in summary_tables(outcomes, host):
            console.print(table)
        ui_hint = "attnbench ui" + ("" if tracking_uri is None else f" --tracking-uri {tracking_uri}")
        console.print(f"Browse the runs: [bold]{ui_hint}[/bold] (http://{tracking.ui.host}:{tracking.ui.port}), "
                      f"compare them: [bold]attnbench compare {grid_file}[/bold]")
        failed = [o for o in outcomes if o.status == "FAILED"]
        if failed:
            err_console.print(f"[red]{len(failed)} of {len(outcomes)} runs FAILED:[/red]")
            for o in failed:
                err_console.print(f"  {o.spec.run_name} (run {o.run_id}): {o.error}", highlight=False)
            raise typer.Exit(1)


def _grid_text(grid_file: Path, raw: dict, overrides: list[str]) -> str:
    if not overrides:
        return grid_file.read_text()
    import yaml

    return f"# {grid_file} with --set {' --set '.join(overrides)}\n" + yaml.safe_dump(raw, sort_keys=False)


def _print_dry_run(experiment, specs) -> None:
    train = experiment.train
    table = Table(title=f"{experiment.name}: {len(specs)} runs (dry run, nothing trained)", title_justify="left",
                  caption=f"every run: epochs={train.epochs} max_steps={train.max_steps} batch_size={train.batch_size} "
                          f"lr={train.lr}", caption_justify="left")
    for col in ("#", "run name", "run_key"):
        table.add_column(col, no_wrap=True)
    for i, spec in enumerate(specs, 1):
        table.add_row(str(i), spec.run_name, spec.run_key)
    console.print(table)


@app.command()
def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plugin: Optional[List[str]] = PLUGIN_OPTION,
):
    """List registered attention variants, model families and tasks, and plugins that failed."""
    from .plugin_host import get_host

    with user_errors():
        host = get_host(plugin or [])
        if as_json:
            typer.echo(json.dumps(host.as_dict(), indent=2))
            return
        for kind, title in (("attention", "attention variants"), ("model", "model families"), ("task", "tasks")):
            table = Table(title=title, title_justify="left")
            table.add_column("name", style="bold", overflow="fold")
            table.add_column("registered by", overflow="fold")
            table.add_column("details", overflow="fold")
            for reg in sorted(host.registry(kind), key=lambda r: r.name):
                table.add_row(reg.name, reg.plugin, _details(kind, reg.factory))
            console.print(table)
        if host.failures:
            table = Table(title="plugins that failed to load", title_justify="left", style="red")
            for col in ("plugin", "stage", "error"):
                table.add_column(col, overflow="fold")
            for f in host.failures:
                table.add_row(f.plugin, f.stage, f.error)
            console.print(table)
        else:
            console.print("[green]no plugin failed to load[/green]")


def _details(kind: str, factory) -> str:
    if kind == "attention":
        flags = [f for f in ("supports_causal", "supports_cross", "supports_padding_mask", "returns_weights")
                 if getattr(factory, f, False)]
        return ", ".join(f.replace("supports_", "") for f in flags)
    if kind == "task":
        return f"{factory.kind}; primary metric {factory.primary_metric}"
    return ", ".join(getattr(factory, "kinds", ()))


@app.command()
def ui(
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: ui.port in mlflow.yaml, 5000)."),
    host: Optional[str] = typer.Option(None, "--host", help="Interface (default: ui.host in mlflow.yaml, 127.0.0.1)."),
    tracking_uri: Optional[str] = TRACKING_OPTION,
):
    """Serve the MLflow UI on the store the runs went to."""
    from .tracking import artifact_root, load_tracking_config, resolve_tracking_uri

    with user_errors():
        tracking = load_tracking_config()
        uri = resolve_tracking_uri(tracking_uri, tracking)
        if uri.startswith(("http://", "https://")):
            raise BadInputError(f"tracking URI {uri} is already a server: open it in a browser instead")
        host = host or tracking.ui.host
        port = port or tracking.ui.port
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--default-artifact-root", artifact_root(tracking), "--host", host, "--port", str(port),
               # one worker: a personal UI needs no more, and it starts in seconds on small machines
               "--workers", os.environ.get("MLFLOW_WORKERS", "1")]
        console.print(f"MLflow UI for {uri} at [bold]http://{host}:{port}[/bold] (Ctrl-C stops it)")
        try:
            code = subprocess.call(cmd)
        except KeyboardInterrupt:
            code = 0
        raise typer.Exit(code)


# Commands whose implementation lives in modules of their own.
app.command("bench")(bench)
app.command("compare")(compare)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
