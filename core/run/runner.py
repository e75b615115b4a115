"""Run a grid: one MLflow parent run per invocation, one nested child run per pairing.

A pairing that raises (or whose loss is not finite) ends as a FAILED child run with its
traceback as an artifact, and the grid goes on. Pairings whose ``attnbench.run_key``
already FINISHED in the experiment are skipped.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..config import ExperimentFile, RunSpec
from ..config.eval_override import attention_options_override
from ..phases import DATA, EVAL, PICTURES, TRACKING, PhaseClock, TimedCalls, phase
from ..plugin_host import PluginHost
from ..tasks import Task
from . import record
from .record import PERF, Tag
from .timings import phase_line, phase_metrics
from .tracking import check_artifact_root_writable, check_writable, get_or_create_experiment
from .training import (NonFiniteLossError, count_parameters, evaluate_split, fit, planned_steps, select_device,
                       seed_everything)

@dataclass
class PairingOutcome:
    spec: RunSpec
    status: str  # FINISHED | FAILED | KILLED | SKIPPED
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


class MetricBuffer:
    """Batches metric writes (one DB transaction per flush instead of one per value)."""

    def __init__(self, client: MlflowClient, run_id: str, size: int = 200):
        self.client, self.run_id, self.size = client, run_id, size
        self.pending: list[Metric] = []
        self.latest: dict[str, float] = {}

    def log(self, key: str, value: float, step: int) -> None:
        self.pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        self.latest[key] = float(value)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        while self.pending:  # log_batch takes at most 1000 metrics a call
            chunk, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)


class GridRunner:
    """Trains every pairing of a grid and records it in MLflow."""

    def __init__(self, experiment: ExperimentFile, specs: list[RunSpec], *, host: PluginHost,
                 tracking_uri: str, artifact_root_uri: str, grid_text: str, grid_source: str,
                 overrides: list[str] | tuple[str, ...] = (), console: Console | None = None,
                 cache_dir: Path | None = None, device: str | None = None,
                 summarize: Callable[[MlflowClient, str, str], object] | None = None):
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
        self._tasks: dict[str, Task | BaseException] = {}
        # (client, experiment id, parent run id) -> logs the grid summary on the parent run;
        # passed in by the CLI so that running never imports the compare stage.
        self.summarize = summarize

    # ------------------------------------------------------------------ public

    def run(self) -> list[PairingOutcome]:
        check_writable(self.tracking_uri)
        check_artifact_root_writable(self.artifact_root_uri)
        # every client call inside a pairing counts as its "tracking" phase
        client = TimedCalls(MlflowClient(self.tracking_uri), TRACKING)
        self.client = client
        self.experiment_id = get_or_create_experiment(client, self.experiment.name, self.artifact_root_uri)
        finished = self._finished_runs()
        parent = client.create_run(self.experiment_id, run_name=f"{self.experiment.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                   tags=record.parent_tags(self.experiment.name, note=f"Grid file `{self.grid_source}`:\n\n```yaml\n{self.grid_text}\n```"))
        self.parent_id = parent.info.run_id
        client.log_batch(self.parent_id, params=[Param("grid.file", self.grid_source),
                                                 Param("grid.overrides", json.dumps(self.overrides)),
                                                 Param("grid.runs", str(len(self.specs)))])
        client.log_text(self.parent_id, self.grid_text, record.GRID_FILE)
        outcomes: list[PairingOutcome] = []
        current: dict = {}
        try:
            with self._progress() as progress:
                grid_bar = progress.add_task("grid", total=len(self.specs), info="")
                for spec in self.specs:
                    if spec.run_key in finished:
                        run = finished[spec.run_key]
                        self.console.print(f"[dim]skip {spec.run_name}: run_key {spec.run_key} already FINISHED (run {run.info.run_id[:8]})[/dim]")
                        outcomes.append(PairingOutcome(spec, "SKIPPED", run.info.run_id, dict(run.data.metrics)))
                    else:
                        with PhaseClock().current() as clock:
                            outcomes.append(self._run_pairing(spec, progress, current, clock))
                        current.clear()
                        self._report(outcomes[-1], len(outcomes))
                    progress.advance(grid_bar)
        except KeyboardInterrupt:
            if current.get("run_id"):
                current["buffer"].flush()
                client.set_terminated(current["run_id"], "KILLED")
                outcomes.append(PairingOutcome(current["spec"], "KILLED", current["run_id"]))
            client.set_terminated(self.parent_id, "KILLED")
            raise
        failed = [o for o in outcomes if o.status == "FAILED"]
        self._summarize_to_parent()
        client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")
        return outcomes

    # ------------------------------------------------------------------ internals

    def _progress(self) -> Progress:
        # One bar for the grid, one for the current run's steps (added per pairing).
        # 4 redraws a second, not rich's 10: each redraw holds the GIL ~2 ms, time the training
        # loop of a 1-thread run would otherwise lose (benchmarks/bench_overhead.py)
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=self.console, refresh_per_second=4)

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

    def _finished_runs(self) -> dict:
        """run_key -> the FINISHED child run, from one query over the experiment."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"{record.CHILD_FILTER} and attributes.status = 'FINISHED'",
            max_results=50000,
        )
        return {r.data.tags.get(Tag.RUN_KEY): r for r in runs}

    def _task_for(self, spec: RunSpec) -> Task:
        """One prepared task per (name, options) per grid, shared by all its models and seeds."""
        key = spec.task + json.dumps(spec.task_options.model_dump(mode="json"), sort_keys=True)
        if key not in self._tasks:
            task_cls = self.host.task.get(spec.task).factory
            try:
                task = task_cls(spec.task_options, cache_dir=self.cache_dir)
                task.prepare()
                self._tasks[key] = task
            except Exception as exc:  # remembered, so the task's other pairings fail the same way fast
                self._tasks[key] = exc
        found = self._tasks[key]
        if isinstance(found, BaseException):
            raise found
        return found

    def _run_pairing(self, spec: RunSpec, progress: Progress, current: dict, clock: PhaseClock) -> PairingOutcome:
        client = self.client
        task_cls = self.host.task.get(spec.task).factory
        family_cls = self.host.model.get(spec.family).factory
        family = family_cls(spec.family_options)
        tags = record.child_tags(
            parent_run_id=self.parent_id, grid=spec.grid_name, task=spec.task, kind=task_cls.kind,
            family=spec.family, model=spec.model_label, seed=spec.seed, run_key=spec.run_key,
            primary_metric=task_cls.primary_metric, greater_is_better=task_cls.greater_is_better,
            description=spec.description, metric_scale=task_cls.metric_scale, baseline=family.is_baseline,
            extra=family.tags())
        run = client.create_run(self.experiment_id, run_name=spec.run_name, tags=tags)
        run_id = run.info.run_id
        buffer = MetricBuffer(client, run_id)
        current.update(run_id=run_id, spec=spec, buffer=buffer)
        step_bar = progress.add_task(spec.run_name, total=None, info="preparing data")
        started = time.perf_counter()
        try:
            client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in spec.params().items()])
            with phase(DATA):
                task = self._task_for(spec)
                io = task.prepare()
            seed_everything(spec.seed)  # model initialisation depends on the seed only
            model = family.build(io, spec.dims, self.host)
            # again after build: families record attention fallbacks while building
            client.log_batch(run_id, tags=[RunTag(record.tag(k), str(v)) for k, v in family.tags().items()])
            device = select_device(self.device_override or spec.train.device)
            buffer.log(PERF["params"], count_parameters(model), 0)
            progress.update(step_bar, total=planned_steps(task, spec.train), info="")
            result = fit(
                task, model, spec.train, seed=spec.seed, device=device, log_metric=buffer.log,
                on_step=lambda step, loss: progress.update(step_bar, completed=step, info=f"loss {loss:.3f}"),
                on_phase=lambda phase: progress.update(step_bar, info=phase),
            )
            wall = time.perf_counter() - started
            buffer.log(PERF["tokens_per_s"], result.train_tokens / max(result.train_seconds, 1e-9), result.steps)
            buffer.log(PERF["wall_s"], wall, result.steps)
            buffer.log(PERF["train_s"], result.train_seconds, result.steps)
            buffer.log(PERF["peak_mem_mib"], result.peak_mem_mib, result.steps)
            buffer.log(PERF["steps"], result.steps, result.steps)
            buffer.flush()
            self._log_evaluation(run_id, result.test)
            for override in spec.evaluate_with:
                progress.update(step_bar, info=f"evaluating test with {override.name}")
                self._evaluate_override(run_id, task, model, spec, device, override, buffer)
            self._log_pictures(run_id, task, model, result)
            if spec.train.save_checkpoint:
                self._log_checkpoint(run_id, model)
            client.log_batch(run_id, tags=[RunTag(Tag.DEVICE, device.type)])
            self._log_phases(buffer, clock, result.steps)
            client.set_terminated(run_id, "FINISHED")
            return PairingOutcome(spec, "FINISHED", run_id, dict(buffer.latest))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self._log_phases(buffer, clock, 0)
            client.log_text(run_id, traceback.format_exc(), record.TRACEBACK)
            message = str(exc) if isinstance(exc, NonFiniteLossError) else f"{type(exc).__name__}: {exc}"
            client.set_tag(run_id, Tag.ERROR, message[:5000])
            client.set_terminated(run_id, "FAILED")
            self.console.print(f"[red]FAILED {spec.run_name}: {message}[/red]")
            return PairingOutcome(spec, "FAILED", run_id, dict(buffer.latest), message)
        finally:
            progress.remove_task(step_bar)

    def _log_evaluation(self, run_id: str, evaluation) -> None:
        if evaluation is None:
            return
        if evaluation.predictions:
            lines = "\n".join(json.dumps(p, ensure_ascii=False, default=str) for p in evaluation.predictions)
            self.client.log_text(run_id, lines + "\n", record.PREDICTIONS)
        for name, content in evaluation.artifacts.items():
            if isinstance(content, bytes):
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / name
                    path.write_bytes(content)
                    self.client.log_artifact(run_id, str(path))
            else:
                self.client.log_text(run_id, content, name)
        if evaluation.tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in evaluation.tags.items()])

    def _evaluate_override(self, run_id, task, model, spec, device, override, buffer) -> None:
        """Evaluate the test split again with changed attention options: ``test_<name>/<metric>``."""
        with attention_options_override(model, override.attention_options) as changed, phase(EVAL):
            evaluation = evaluate_split(task, model, "test", spec.train, device)
        for name, value in evaluation.metrics.items():
            buffer.log(record.override_prefix(override.name) + name, float(value), 0)
        buffer.log(record.override_prefix(override.name) + "attention_modules_changed", changed, 0)
        buffer.flush()

    def _log_pictures(self, run_id: str, task: Task, model: torch.nn.Module, result) -> None:
        """Training curves and attention maps; a picture that fails never fails the run."""
        try:
            from .pictures import log_run_pictures  # matplotlib: imported when the first run ends

            with phase(PICTURES):
                log_run_pictures(self.client, run_id, task, model, result)
        except Exception as exc:
            self.console.print(f"[yellow]warning: pictures for run {run_id[:8]} failed: {type(exc).__name__}: {exc}[/yellow]")

    @staticmethod
    def _log_phases(buffer: MetricBuffer, clock: PhaseClock, step: int) -> None:
        """Seconds per phase (perf/phase/*): the last write, so that nearly all tracking is in it."""
        for name, seconds in phase_metrics(clock).items():
            buffer.log(name, seconds, step)
        buffer.flush()

    def _log_checkpoint(self, run_id: str, model: torch.nn.Module) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            torch.save(model.state_dict(), path)
            self.client.log_artifact(run_id, str(path), record.CHECKPOINT)

    def _summarize_to_parent(self) -> None:
        if self.summarize is None:
            return
        try:
            self.summarize(self.client, self.experiment_id, self.parent_id)
        except Exception as exc:
            self.console.print(f"[yellow]warning: grid summary on the parent run failed: {type(exc).__name__}: {exc}[/yellow]")


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
