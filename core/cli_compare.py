"""``attnbench compare``: summarise a grid's runs from MLflow (the lead wires it into the CLI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
import yaml
from typing_extensions import Annotated

from . import compare_format
from .compare import compare_experiment, find_experiment, latest_parent_run_id
from .compare_report import fetch_bench_series, log_report, write_report
from .errors import BadInputError


def experiment_name_of(grid_file: Path) -> str:
    """The ``name`` field of a grid file: the MLflow experiment its runs are logged to."""
    if not grid_file.is_file():
        raise BadInputError(f"GRID_FILE: {grid_file} does not exist; give a grid YAML or --experiment NAME")
    try:
        data = yaml.safe_load(grid_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BadInputError(f"{grid_file}: not valid YAML: {exc}") from None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise BadInputError(f"{grid_file}: name: required (a string naming the grid's MLflow experiment)")
    return name


def tracking_client(tracking_uri: str | None):
    """An MlflowClient for ``tracking_uri``, else the project's configured store."""
    from mlflow.tracking import MlflowClient

    if tracking_uri is None:
        try:  # the project's mlflow.yaml, through the tracking module when it offers a resolver
            from . import tracking

            resolve = getattr(tracking, "tracking_uri", None) or getattr(tracking, "resolve_tracking_uri", None)
            tracking_uri = resolve() if callable(resolve) else None
        except ImportError:
            tracking_uri = None
    return MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))


def compare(
    grid_file: Annotated[Optional[Path], typer.Argument(help="grid YAML; its `name` is the experiment")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", "-e", help="MLflow experiment name")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="only the children of this parent run id")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table | markdown | csv | json")] = "table",
    out: Annotated[Optional[Path], typer.Option("--out", help="also write comparison.* and plots here")] = None,
    significance: Annotated[bool, typer.Option("--significance/--no-significance",
                                               help="paired bootstrap tests against the rnn baseline")] = True,
    log: Annotated[bool, typer.Option("--log/--no-log", help="attach table and plots to the parent run")] = True,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="overrides mlflow.yaml")] = None,
) -> None:
    """Per task: each model's test metrics (mean ± std over seeds), speed, the difference to the
    rnn baseline with a paired significance test, and the runs that failed."""
    if format not in compare_format.FORMATS:
        raise BadInputError(f"--format: {format!r} is not a format; valid: {', '.join(compare_format.FORMATS)}")
    if (grid_file is None) == (experiment is None):
        raise BadInputError("give exactly one of GRID_FILE or --experiment NAME")
    name = experiment or experiment_name_of(grid_file)
    client = tracking_client(tracking_uri)
    comparison = compare_experiment(client, name, run, with_significance=significance)

    if format == "table":
        compare_format.print_table(comparison)
    else:
        typer.echo(compare_format.render(comparison, format), nl=False)

    bench = fetch_bench_series(client) if (out or log) else {}
    if out is not None:
        written = write_report(comparison, out, bench)
        typer.echo(f"wrote {len(written)} files to {out}", err=True)
    if log:
        parent = run or latest_parent_run_id(client, find_experiment(client, name).experiment_id)
        if parent is not None:
            log_report(client, parent, comparison, bench)
            typer.echo(f"logged the summary to parent run {parent} (artifacts: summary/)", err=True)
