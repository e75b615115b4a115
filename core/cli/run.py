"""``attnbench run``: train every pairing of a grid and log it to MLflow."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import BadInputError
from .common import (DEFAULT_GRID, PLUGIN_OPTION, TRACKING_OPTION, VERBOSE_OPTION, console, err_console,
                     report_plugin_problems, user_errors)


def run(
    grid_file: Path = typer.Argument(DEFAULT_GRID, help="Experiment grid YAML.", show_default=True),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: key.path=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded runs and exit."),
    device: Optional[str] = typer.Option(None, "--device", help="Force a device: auto, cpu or cuda (overrides train.device)."),
    tracking_uri: Optional[str] = TRACKING_OPTION,
    plugin: Optional[List[str]] = PLUGIN_OPTION,
    verbose: bool = VERBOSE_OPTION,
    max_memory_gib: float = typer.Option(8.0, "--max-memory-gib", metavar="GIB",
                                         help="Refuse models whose training state is estimated above this (0: no limit)."),
    workers: Optional[str] = typer.Option(None, "--workers", metavar="N|auto",
                                          help="Pairings trained at once; auto: one per CPU core (default: execution.workers, 1)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="local (worker processes) or ray (default: execution.executor, local)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="An existing Ray cluster, host:port (default: a local Ray)."),
    lease: Optional[float] = typer.Option(None, "--lease", help="Seconds without a heartbeat after which a RUNNING run counts as dead (default 300)."),
):
    """Train every pairing of a grid (default: experiments/quick.yaml) and log it to MLflow."""
    from ..config import load_experiment, plan_grid
    from ..plugin_host import get_host
    from ..run.provenance import attach_provenance
    from ..run.tracking import (artifact_root, check_artifact_root_writable, check_writable, load_tracking_config,
                                resolve_tracking_uri)

    with user_errors():
        if device not in (None, "auto", "cpu", "cuda"):
            raise BadInputError(f"--device {device!r}: valid: auto, cpu, cuda")
        if not grid_file.exists() and grid_file == DEFAULT_GRID:
            raise BadInputError(f"{grid_file}: not found. Run from the attnbench checkout, or pass a grid file: attnbench run path/to/grid.yaml")
        overrides = list(set_ or [])
        overrides += _execution_overrides(workers, executor, ray_address, lease)
        experiment, raw = load_experiment(grid_file, overrides)
        host = get_host(plugin or [])
        report_plugin_problems(host, verbose)
        plan = plan_grid(experiment, host, source=str(grid_file))
        specs = plan.specs
        attach_provenance(specs, host, experiment.execution.provenance_in_run_key)
        tracking = load_tracking_config()
        uri = resolve_tracking_uri(tracking_uri, tracking)
        if not dry_run:  # a store that cannot be written is known before minutes of data loading
            check_writable(uri)
            check_artifact_root_writable(artifact_root(tracking, uri))
        from ..run.preflight import preflight

        try:
            checked = preflight(specs, host, device=device, max_memory_gib=max_memory_gib, source=str(grid_file))
        except KeyboardInterrupt:
            err_console.print("\n[yellow]interrupted during the preflight: nothing was trained or written[/yellow]")
            raise typer.Exit(130) from None
        for warning in checked.warnings:
            err_console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
        if dry_run:
            _print_dry_run(experiment, plan, checked)
            return
        for skipped in plan.skipped:
            err_console.print(f"[dim]skip {skipped.task}/{skipped.model_label}: {skipped.reason}[/dim]", highlight=False)
        _check_execution(experiment.execution)
        grid_text = _grid_text(grid_file, raw, overrides)
        from ..compare.report import summarize_grid_to_parent
        from ..run.interrupts import exit_code_of, interrupts_raise
        from ..run.runner import GridRunner, summary_tables

        runner = GridRunner(experiment, specs, host=host, tracking_uri=uri, artifact_root_uri=artifact_root(tracking, uri),
                            grid_text=grid_text, grid_source=str(grid_file), overrides=overrides, console=console,
                            device=device, summarize=partial(summarize_grid_to_parent, host=host), raw=raw, plugin_modules=plugin or [],
                            planned_steps=checked.steps)
        execution = experiment.execution
        how = "" if execution.workers == 1 and execution.executor == "local" else \
            f" ({execution.workers} at once, {execution.executor} executor)"
        console.print(f"[bold]{experiment.name}[/bold]: {len(specs)} runs{how} -> MLflow experiment "
                      f"'{experiment.name}' at {uri}")
        try:
            with interrupts_raise():
                outcomes = runner.run()
        except KeyboardInterrupt as exc:
            try:
                err_console.print(f"\n[yellow]interrupted ({getattr(exc, 'signal_name', 'SIGINT')}): the runs in flight and "
                                  "the grid's parent run are marked KILLED; re-run the same command to continue "
                                  "(finished runs are skipped).[/yellow]")
            except (BrokenPipeError, SystemExit):  # `| tee` got the same Ctrl-C: nobody reads any more (rich exits 1)
                pass
            raise typer.Exit(exit_code_of(exc)) from None
        for table in summary_tables(outcomes, host):
            console.print(table)
        console.print(closing_hint(grid_file, tracking_uri, tracking), highlight=False)
        failed = [o for o in outcomes if o.status == "FAILED"]
        if failed:
            err_console.print(f"[red]{len(failed)} of {len(outcomes)} runs FAILED:[/red]")
            for o in failed:
                err_console.print(f"  {o.spec.run_name} (run {o.run_id}): {o.error}", highlight=False)
            raise typer.Exit(1)


def closing_hint(grid_file: Path, tracking_uri: str | None, tracking) -> str:
    """What to do next, as commands that work when copied (the store flag included)."""
    import shlex

    store = "" if tracking_uri is None else f" --tracking-uri {shlex.quote(tracking_uri)}"
    return (f"Browse the runs: [bold]attnbench ui{store}[/bold] (http://{tracking.ui.host}:{tracking.ui.port}), "
            f"compare them: [bold]attnbench compare {shlex.quote(str(grid_file))}{store}[/bold]")


def _execution_overrides(workers, executor, ray_address, lease) -> list[str]:
    """The execution flags as ``--set execution.*`` assignments: one validation path for both."""
    from ..config.execution import WORKERS_VALID

    if workers is not None and workers != "auto" and not (workers.isdigit() and int(workers) >= 1):
        raise BadInputError(f"--workers {workers!r}: valid: {WORKERS_VALID}")
    if executor not in (None, "local", "ray"):
        raise BadInputError(f"--executor {executor!r}: valid: local, ray")
    if lease is not None and lease <= 0:
        raise BadInputError(f"--lease {lease}: must be a positive number of seconds")
    flags = {"workers": workers, "executor": executor, "ray_address": ray_address, "lease_s": lease}
    return [f"execution.{key}={value}" for key, value in flags.items() if value is not None]


def _check_execution(execution) -> None:
    """Before any work: Ray present and reachable; a warning when workers outnumber the cores."""
    from ..config.execution import usable_cores

    if execution.executor == "ray":
        from ..run.executors import check_ray

        check_ray(execution.ray_address)
    elif execution.workers > usable_cores():
        err_console.print(f"[yellow]warning: {execution.workers} workers on {usable_cores()} CPU cores: they will "
                          "compete for the cores and each pairing takes longer[/yellow]")


def _grid_text(grid_file: Path, raw: dict, overrides: list[str]) -> str:
    if not overrides:
        return grid_file.read_text()
    import yaml

    return f"# {grid_file} with --set {' --set '.join(overrides)}\n" + yaml.safe_dump(raw, sort_keys=False)


def _print_dry_run(experiment, plan, checked) -> None:
    specs = plan.specs
    train = experiment.train
    caption = f"every run: epochs={train.epochs} max_steps={train.max_steps} batch_size={train.batch_size} lr={train.lr}"
    for task in dict.fromkeys(spec.task for spec in specs):
        own = next(spec.train for spec in specs if spec.task == task)
        changed = {k: v for k, v in own.model_dump().items() if v != getattr(train, k)}
        if changed:
            caption += f"; {task}: " + " ".join(f"{k}={v}" for k, v in changed.items())
    table = Table(title=f"{experiment.name}: {len(specs)} runs (dry run, nothing trained)", title_justify="left",
                  caption=caption, caption_justify="left")
    for col in ("#", "run name", "parameters", "run_key"):
        table.add_column(col, no_wrap=True)
    for i, spec in enumerate(specs, 1):
        params = checked.params_of(spec)
        table.add_row(str(i), spec.run_name, "?" if params is None else f"{params:,}", spec.run_key)
    console.print(table)
    if plan.skipped:
        skipped = Table(title=f"{len(plan.skipped)} pairings skipped", title_justify="left")
        for col in ("task", "model", "reason"):
            skipped.add_column(col)
        for s in plan.skipped:
            skipped.add_row(s.task, s.model_label, s.reason)
        console.print(skipped)
