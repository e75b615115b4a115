"""Run a grid: one MLflow parent run per invocation, one nested child run per pairing.

The runner orchestrates; it trains nothing itself. It closes stale runs a dead worker left
behind, skips pairings that already FINISHED, hands the others to an executor (this process,
local worker processes or Ray; see executors.py), waits for pairings another invocation holds
(claims.py), shows progress, and closes the parent run on every exit path: done, a failure,
SIGINT/SIGTERM/SIGHUP (interrupts.py), or an exception of its own.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Callable

from mlflow.entities import Param
from rich.console import Console
from rich.table import Table

from ..config import ExperimentFile, RunSpec
from ..config.execution import ExecutionConfig
from ..plugin_host import PluginHost
from . import claims, interrupts, record
from .display import make_display
from .pairing import PairingOutcome
from .record import PERF, Tag
from .timings import phase_line
from .tracking import check_artifact_root_writable, check_store, get_or_create_experiment, open_client, store_lock
from .worker import GridJob, UnitResult, Worker, default_threads

__all__ = ["GridRunner", "PairingOutcome", "submission_order", "summary_tables"]


def submission_order(todo: list[int], specs: list[RunSpec], planned_steps: dict[str, int], slots: int) -> list[int]:
    """The order pairings go to the executor: grid order with one slot; with several, the
    longest (most planned steps; unknown counts as 0) first, so that the short ones fill the
    gaps at the end. In grid order a long pairing submitted last runs alone while the other
    workers idle. Results do not depend on the order (each pairing seeds itself)."""
    if slots <= 1:
        return list(todo)
    return sorted(todo, key=lambda i: -planned_steps.get(specs[i].run_key, 0))  # stable: ties keep grid order


class GridRunner:
    """Trains every pairing of a grid (through an executor) and records it in MLflow."""

    def __init__(self, experiment: ExperimentFile, specs: list[RunSpec], *, host: PluginHost,
                 tracking_uri: str, artifact_root_uri: str | None, grid_text: str, grid_source: str,
                 overrides: list[str] | tuple[str, ...] = (), console: Console | None = None,
                 cache_dir: Path | None = None, device: str | None = None,
                 summarize: Callable[[object, str, str], object] | None = None,
                 raw: dict | None = None, plugin_modules: list[str] | tuple[str, ...] = (),
                 execution: ExecutionConfig | None = None, planned_steps: dict[str, int] | None = None):
        self.experiment = experiment
        self.specs = specs
        self.host = host
        self.tracking_uri = tracking_uri
        self.artifact_root_uri = artifact_root_uri
        self.grid_text = grid_text
        self.grid_source = grid_source
        self.overrides = list(overrides)
        self.console = console or Console()
        self.cache_dir = Path(cache_dir or os.environ.get("ATTNBENCH_CACHE", ".attnbench_cache"))
        self.device_override = device
        # the grid after --set: what other processes rebuild the specs from
        self.raw = raw if raw is not None else experiment.model_dump(mode="json")
        self.plugin_modules = list(plugin_modules)
        self.execution = execution or experiment.execution
        self.planned_steps = planned_steps or {}  # run_key -> training steps (the preflight's count)
        # (client, experiment id, parent run id) -> logs the grid summary on the parent run;
        # passed in by the CLI so that running never imports the compare stage.
        self.summarize = summarize

    # ------------------------------------------------------------------ public

    def run(self) -> list[PairingOutcome]:
        check_store(self.tracking_uri)
        check_artifact_root_writable(self.artifact_root_uri)
        client = self.client = open_client(self.tracking_uri)
        with store_lock(self.tracking_uri):
            self.experiment_id = get_or_create_experiment(client, self.experiment.name, self.artifact_root_uri)
        self._close_stale()
        lease = self.execution
        parent = client.create_run(self.experiment_id, run_name=f"{self.experiment.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                   tags=record.parent_tags(self.experiment.name, note=f"Grid file `{self.grid_source}`:\n\n```yaml\n{self.grid_text}\n```")
                                   | {Tag.OWNER: claims.owner_id(), Tag.HEARTBEAT: f"{time.time():.3f}"})
        self.parent_id = parent.info.run_id
        heartbeat = claims.Heartbeat(self.tracking_uri, lease.heartbeat_every_s)
        heartbeat.add(self.parent_id)
        self.outcomes: dict[int, PairingOutcome] = {}
        executor = None
        try:
            client.log_batch(self.parent_id, params=[Param("grid.file", self.grid_source),
                                                     Param("grid.overrides", json.dumps(self.overrides)),
                                                     Param("grid.runs", str(len(self.specs))),
                                                     Param("grid.executor", lease.executor),
                                                     Param("grid.workers", str(lease.workers))])
            client.log_text(self.parent_id, self.grid_text, record.GRID_FILE)
            with make_display(self.console, len(self.specs)) as display:
                self.display = display
                todo = self._skip_finished()
                if todo:
                    executor = self._executor(heartbeat, slots=min(lease.workers, len(todo)))
                    self._drive(executor, todo)
                    executor.stop()
                    executor = None
            outcomes = [self.outcomes[i] for i in sorted(self.outcomes)]
            self._summarize_to_parent()
            failed = any(o.status == "FAILED" for o in outcomes)
            client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")
            return outcomes
        except BaseException as exc:
            self._abort(executor, exc)
            raise
        finally:
            heartbeat.stop()

    # ------------------------------------------------------------------ the loop

    def _skip_finished(self) -> list[int]:
        finished = self._finished_runs()
        todo = []
        for i, spec in enumerate(self.specs):
            run = finished.get(spec.run_key)
            if run is None:
                todo.append(i)
                continue
            self.console.print(f"[dim]skip {spec.run_name}: run_key {spec.run_key} already FINISHED (run {run.info.run_id[:8]})[/dim]")
            self.outcomes[i] = PairingOutcome(spec, "SKIPPED", run.info.run_id, dict(run.data.metrics))
            self.display.advance()
        return todo

    def _drive(self, executor, todo: list[int]) -> None:
        """Submit pairings as slots free up; wait for those another invocation holds."""
        pending = deque(submission_order(todo, self.specs, self.planned_steps, executor.slots))
        while pending or self._waiting or self._in_flight:
            now = time.monotonic()
            for index, when in list(self._waiting.items()):
                if when <= now:
                    del self._waiting[index]
                    pending.append(index)
            while pending and len(self._in_flight) < executor.slots:
                index = pending.popleft()
                spec = self.specs[index]
                state = claims.pairing_state(self.client, self.experiment_id, spec.run_key, self.execution.lease_s)
                holder = state.finished or (state.live[0] if state.live else None)
                if holder is not None:  # finished or held elsewhere meanwhile: no worker needed
                    self._done(index, UnitResult(index, "SKIPPED" if state.finished else "CLAIMED", holder.info.run_id,
                                                 dict(holder.data.metrics), holder=claims.holder_text(holder)))
                    continue
                self._in_flight.add(index)
                self.display.start(index, spec.run_name)
                executor.submit(index)
            idle = not self._in_flight and self._waiting
            executor.poll(max(0.05, min(self._waiting.values()) - time.monotonic()) if idle else 0.5)

    def _on_event(self, index: int, kind: str, value) -> None:
        """Executors report here, in this process's main thread."""
        if kind == "note":
            self.console.print(str(value), highlight=False)
        elif kind == "done":
            self._in_flight.discard(index)
            self._done(index, value)
        else:
            if kind == "run":  # the pairing's run: closed here if its worker dies without closing it
                self._run_ids[index] = value
            self.display.update(index, kind, value)

    def _done(self, index: int, result: UnitResult) -> None:
        spec = self.specs[index]
        self.display.drop(index)
        if result.status == "CLAIMED":  # another invocation trains it: look again later
            if index not in self._told_claimed:
                self._told_claimed.add(index)
                self.console.print(f"[dim]wait {spec.run_name}: claimed by {result.holder}[/dim]", highlight=False)
            self._waiting[index] = time.monotonic() + self._recheck_s
            return
        self.display.advance()
        run_id = result.run_id or self._run_ids.get(index)  # a worker that died reports no run
        if result.status == "FAILED" and run_id:
            self._close_if_open(run_id, result.error)
        if result.status == "SKIPPED":
            self.console.print(f"[dim]skip {spec.run_name}: FINISHED by {result.holder}[/dim]", highlight=False)
        outcome = PairingOutcome(spec, result.status, run_id, result.metrics, result.error)
        self.outcomes[index] = outcome
        if result.status != "SKIPPED":
            self._report(outcome, len(self.outcomes))

    def _executor(self, heartbeat, slots: int):
        """What trains the pairings: ``slots`` at once (no more workers than pairings left to train)."""
        from .executors import InProcessExecutor, LocalPoolExecutor, RayExecutor

        execution = self.execution
        job = GridJob(raw=self.raw, source=self.grid_source, plugin_modules=self.plugin_modules,
                      tracking_uri=self.tracking_uri, experiment_id=self.experiment_id, parent_id=self.parent_id,
                      run_keys=[s.run_key for s in self.specs], execution=execution, cache_dir=str(self.cache_dir.resolve()),
                      device=self.device_override)
        self._in_flight, self._waiting, self._told_claimed = set(), {}, set()
        self._run_ids: dict[int, str] = {}  # pairing index -> its run, from the worker's "run" event
        self._recheck_s = max(0.5, min(5.0, execution.heartbeat_every_s))
        on_event = self._on_event
        if execution.executor == "ray":
            use_gpu = (self.device_override or self.specs[0].train.device) == "cuda" or _cuda_visible()
            job.threads = self.specs[0].train.threads or 1
            return RayExecutor(job, on_event, slots, execution.ray_address, use_gpu)
        if slots == 1:
            worker = Worker(job, host=self.host, specs=self.specs, heartbeat=heartbeat)
            return InProcessExecutor(worker, on_event)
        job.threads = self.specs[0].train.threads or default_threads(slots)
        return LocalPoolExecutor(job, on_event, slots)

    def _abort(self, executor, exc: BaseException) -> None:
        """Every exit that is not a normal end: stop the workers, close what is still open."""
        interrupts.closing()
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "KILLED" if interrupted else "FAILED"
        try:
            if executor is not None:
                executor.stop(interrupted=True)
            for run in self.client.search_runs([self.experiment_id], filter_string=(
                    f"tags.`{record.PARENT_RUN_ID}` = '{self.parent_id}' and attributes.status = 'RUNNING'")):
                self.client.set_terminated(run.info.run_id, status)
                index = next((i for i, s in enumerate(self.specs) if s.run_key == run.data.tags.get(Tag.RUN_KEY)), None)
                if index is not None:
                    self.outcomes[index] = PairingOutcome(self.specs[index], status, run.info.run_id)
            if not interrupted:
                self.client.set_tag(self.parent_id, Tag.ERROR, f"{type(exc).__name__}: {exc}"[:5000])
        finally:
            self.client.set_terminated(self.parent_id, status)

    # ------------------------------------------------------------------ internals

    def _report(self, outcome: PairingOutcome, done: int) -> None:
        """One line per finished pairing: the log when output is not a terminal (CI, pipes)."""
        primary = self.host.task.get(outcome.spec.task).factory.primary_metric
        value = outcome.metrics.get(record.TEST + primary)
        quality = f"{primary} {value:.4g}" if value is not None else outcome.error[:120]
        wall = outcome.metrics.get(PERF["pairing_s"], outcome.metrics.get(PERF["wall_s"]))
        took = f" ({wall:.0f} s)" if wall is not None else ""
        phases = phase_line(outcome.metrics)
        took += f"\n    {phases}" if phases else ""
        colour = "green" if outcome.status == "FINISHED" else "red"
        self.console.print(f"[{done}/{len(self.specs)}] {outcome.spec.run_name}: "
                           f"[{colour}]{outcome.status.lower()}[/{colour}] {quality}{took}", highlight=False)

    def _close_if_open(self, run_id: str, error: str) -> None:
        """A failed pairing's run that nobody closed (its worker process died): FAILED now,
        with the reason, instead of RUNNING until its heartbeat goes stale. A store that fails
        here only leaves the run for the stale check: the grid goes on."""
        try:
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_tag(run_id, Tag.CLOSED_BECAUSE, record.WORKER_DIED)
                self.client.set_tag(run_id, Tag.ERROR, error[:5000])
                self.client.set_terminated(run_id, "FAILED")
        except Exception as exc:
            self.console.print(f"[yellow]warning: could not close run {run_id[:8]} ({type(exc).__name__}: {exc}); "
                               "the next `attnbench run` closes it as stale[/yellow]", highlight=False)

    def _finished_runs(self) -> dict:
        """run_key -> the FINISHED child run, from one query over the experiment."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"{record.CHILD_FILTER} and attributes.status = 'FINISHED'",
            max_results=50000,
        )
        return {r.data.tags.get(Tag.RUN_KEY): r for r in runs}

    def _close_stale(self) -> None:
        """Runs a dead worker or invocation left RUNNING: FAILED ("lost heartbeat"), re-run below."""
        stale = claims.find_stale(self.client, [self.experiment_id], self.execution.lease_s)
        for line in claims.close_stale(self.client, stale, self.execution.lease_s):
            self.console.print(f"[yellow]{line}[/yellow]", highlight=False)

    def _summarize_to_parent(self) -> None:
        if self.summarize is None:
            return
        try:
            self.summarize(self.client, self.experiment_id, self.parent_id)
        except Exception as exc:
            self.console.print(f"[yellow]warning: grid summary on the parent run failed: {type(exc).__name__}: {exc}[/yellow]")


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def compact(n: float) -> str:
    """185234 -> 185k, 1234567 -> 1.2M: fits an 80-column terminal."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}" if n < 10 * div else f"{n / div:.0f}{unit}"
    return f"{n:.0f}"


def summary_tables(outcomes: list[PairingOutcome], host: PluginHost) -> list[Table]:
    """One table per task: each model's primary test metric, parameters, training tokens/s,
    wall time and status."""
    tables = []
    for task in dict.fromkeys(o.spec.task for o in outcomes):
        primary = host.task.get(task).factory.primary_metric
        table = Table(title=f"{task}: test {primary}", title_justify="left")
        table.add_column("model", no_wrap=True)
        table.add_column("seed", justify="right")
        table.add_column("test", justify="right")
        for col in ("params", "tok/s", "secs"):
            table.add_column(col, justify="right")
        table.add_column("status", no_wrap=True)
        for o in (o for o in outcomes if o.spec.task == task):
            m = o.metrics
            get = lambda key, fmt: fmt(m[key]) if key in m else "-"
            status = {"FINISHED": "[green]ok[/green]", "SKIPPED": "[dim]done before[/dim]",
                      "FAILED": "[red]FAILED[/red]", "KILLED": "[yellow]KILLED[/yellow]"}[o.status]
            table.add_row(o.spec.model_label, str(o.spec.seed), get(record.TEST + primary, lambda v: f"{v:.2f}"),
                          get(PERF["params"], compact), get(PERF["tokens_per_s"], compact),
                          get(PERF["wall_s"], lambda v: f"{v:.0f}"), status)
        tables.append(table)
    return tables
