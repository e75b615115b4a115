"""``attnbench stale``: list (and with ``--close``, close) runs a dead worker left RUNNING."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import BadInputError
from .common import TRACKING_OPTION, console, user_errors


def stale(
    grid_file: Optional[Path] = typer.Argument(None, help="Grid YAML whose experiment to look in (default: every experiment)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="Look in this MLflow experiment instead of a grid's."),
    lease: Optional[float] = typer.Option(None, "--lease", help="Seconds without a heartbeat that make a run stale (default: the grid's execution.lease_s, else 300)."),
    close: bool = typer.Option(False, "--close", help="Mark the stale runs FAILED (reason: lost heartbeat) and close their stale parents."),
    tracking_uri: Optional[str] = TRACKING_OPTION,
):
    """List RUNNING runs whose heartbeat is older than the lease (their process died); --close closes them."""
    import time

    from ..config.execution import ExecutionConfig
    from ..run import claims
    from ..run.tracking import check_store, open_client, resolve_tracking_uri

    with user_errors():
        if lease is not None and lease <= 0:
            raise BadInputError(f"--lease {lease}: must be a positive number of seconds")
        if grid_file is not None and experiment is not None:
            raise BadInputError("give a grid file or --experiment, not both")
        execution = ExecutionConfig()
        if grid_file is not None:
            from ..config import load_experiment

            grid, _ = load_experiment(grid_file)
            experiment, execution = grid.name, grid.execution
        lease_s = lease or execution.lease_s
        uri = resolve_tracking_uri(tracking_uri)
        check_store(uri)
        client = open_client(uri)
        if experiment is not None:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise BadInputError(f"no experiment {experiment!r} at {uri}")
            experiment_ids = [found.experiment_id]
        else:
            experiment_ids = [e.experiment_id for e in client.search_experiments()]
        runs = claims.find_stale(client, experiment_ids, lease_s) if experiment_ids else []
        if not runs:
            console.print(f"no stale runs (lease {lease_s:g} s) at {uri}")
            return
        table = Table(title=f"{len(runs)} stale runs (no heartbeat for over {lease_s:g} s)", title_justify="left")
        for col in ("run", "id", "held by", "last seen"):
            table.add_column(col, no_wrap=col != "run")
        now = time.time()
        for run in runs:
            table.add_row(run.info.run_name, run.info.run_id, claims.holder_text(run).split(" (run")[0],
                          f"{now - claims.last_seen(run):.0f} s ago")
        console.print(table)
        if not close:
            console.print("close them with: attnbench stale " + (str(grid_file) + " " if grid_file else "")
                          + (f"--experiment {experiment} " if experiment and not grid_file else "") + "--close")
            return
        for line in claims.close_stale(client, runs, lease_s):
            console.print(line, highlight=False)
