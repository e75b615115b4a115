"""``attnbench compare``: summarise a grid's runs from MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import BadInputError
from .common import DEFAULT_GRID, PLUGIN_OPTION, user_errors


def experiment_name_of(grid_file: Path) -> str:
    """The ``name`` field of a grid file: the MLflow experiment its runs are logged to."""
    from ..config import load_experiment

    experiment, _ = load_experiment(grid_file)
    return experiment.name


def tracking_client(tracking_uri: str | None):
    """An MlflowClient for ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else mlflow.yaml."""
    from mlflow.tracking import MlflowClient

    from ..run.tracking import resolve_tracking_uri

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def compare(
    grid_file: Annotated[Optional[Path], typer.Argument(
        help="grid YAML; its `name` is the experiment (default: experiments/quick.yaml, like run)")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", "-e", help="MLflow experiment name")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="only the children of this parent run id")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table | markdown | csv | json")] = "table",
    out: Annotated[Optional[Path], typer.Option("--out", help="also write comparison.* and plots here")] = None,
    significance: Annotated[bool, typer.Option("--significance/--no-significance",
                                               help="paired tests against the no-attention baseline")] = True,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="measure deltas and tests against this model label instead of the no-attention "
                           "baseline, e.g. rnn-lstm+additive")] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="attach table and plots to the parent run")] = True,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="overrides mlflow.yaml")] = None,
    plugin: Optional[List[str]] = PLUGIN_OPTION,
) -> None:
    """Per task: each model's test metrics (mean ± std over seeds), speed, delta to the no-attention baseline.

    Each delta comes with a paired significance test; runs that failed are listed under the tables."""
    with user_errors():
        _compare(grid_file, experiment, run, format, out, significance, log, tracking_uri, plugin or [], baseline)


def _compare(grid_file, experiment, run, format, out, significance, log, tracking_uri, plugins,
             baseline=None) -> None:
    # The compare stage (numpy, matplotlib for plots) loads only when the command runs.
    from ..compare import render as compare_format
    from ..compare.read import find_experiment, latest_parent_run_id
    from ..compare.report import fetch_bench_series, log_report, write_report
    from ..compare.summary import compare_experiment

    if format not in compare_format.FORMATS:
        raise BadInputError(f"--format: {format!r} is not a format; valid: {', '.join(compare_format.FORMATS)}")
    if grid_file is not None and experiment is not None:
        raise BadInputError("give GRID_FILE or --experiment NAME, not both")
    if grid_file is None and experiment is None:
        grid_file = DEFAULT_GRID  # like `attnbench run`
        if not grid_file.exists():
            raise BadInputError(f"{grid_file}: not found. Run from the attnbench checkout, or pass a grid file "
                                "or --experiment NAME")
    name = experiment or experiment_name_of(grid_file)
    client = tracking_client(tracking_uri)
    # the tasks' plugins declare their significance tests (plugins used with `run --plugin`
    # need the same --plugin here)
    host = None
    if significance:
        from ..plugin_host import get_host

        host = get_host(plugins)
    comparison = compare_experiment(client, name, run, with_significance=significance, host=host,
                                    reference=baseline)
    if format == "table":
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=compare_format.WIDE_CONSOLE)
        compare_format.print_table(comparison, console)
    else:
        typer.echo(compare_format.render(comparison, format), nl=False)

    bench = fetch_bench_series(client) if (out or log) else {}
    if out is not None:
        written = write_report(comparison, out, bench)
        typer.echo(f"wrote {len(written)} files to {out}", err=True)
    if log and baseline is not None:
        # the parent's summary/ stays the grid's standard comparison (against its no-attention baseline)
        typer.echo("not logged to the parent run: --baseline comparisons are shown, not stored", err=True)
    elif log:
        parent = run or latest_parent_run_id(client, find_experiment(client, name).experiment_id)
        if parent is not None:
            log_report(client, parent, comparison, bench)
            typer.echo(f"logged the summary to parent run {parent} (artifacts: summary/)", err=True)
