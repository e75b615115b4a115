"""Train one pairing into its (already claimed) MLflow child run: params, metrics, evaluation,
pictures, checkpoint. Runs wherever the executor put it: this process, a worker process, a Ray task.

A pairing that raises (or whose loss is not finite) ends FAILED with its traceback as an
artifact; an interrupt ends it KILLED and propagates.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from mlflow.entities import Metric, Param, RunTag

from ..config import RunSpec
from ..config.eval_override import attention_options_override
from ..phases import DATA, EVAL, PICTURES, TRACKING, PhaseClock, TimedCalls, phase
from ..plugin_host import PluginHost
from ..tasks import Task
from . import record
from .environment import environment
from .record import PERF, Tag
from .timings import phase_metrics
from .training import NonFiniteLossError, count_parameters, evaluate_split, fit, planned_steps, select_device, seed_everything

# report(kind, value): "total" (planned steps), "step" ((step, loss)), "phase" (text), "note" (a line to print)
Report = Callable[[str, object], None]


@dataclass
class PairingOutcome:
    spec: RunSpec
    status: str  # FINISHED | FAILED | KILLED | SKIPPED
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


class MetricBuffer:
    """Batches metric writes (one DB transaction per flush instead of one per value)."""

    def __init__(self, client, run_id: str, size: int = 200):
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


class PairingTrainer:
    """Trains pairings of one grid in one process; prepared tasks are shared between them."""

    def __init__(self, client, host: PluginHost, *, cache_dir: Path, device: str | None = None):
        # every client call inside a pairing counts as its "tracking" phase
        self.client = TimedCalls(client, TRACKING)
        self.host, self.cache_dir, self.device_override = host, cache_dir, device
        self._tasks: dict[str, Task | BaseException] = {}

    def child_tags(self, spec: RunSpec, parent_id: str) -> dict[str, str]:
        from .provenance import provenance_for

        task_cls = self.host.task.get(spec.task).factory
        family = self.host.model.get(spec.family).factory(spec.family_options)
        tags = record.child_tags(
            parent_run_id=parent_id, grid=spec.grid_name, task=spec.task, kind=task_cls.kind,
            family=spec.family, model=spec.model_label, seed=spec.seed, run_key=spec.run_key,
            primary_metric=task_cls.primary_metric, greater_is_better=task_cls.greater_is_better,
            description=spec.description, metric_scale=task_cls.metric_scale, baseline=family.is_baseline,
            extra=family.tags())
        return tags | record.provenance_tags(provenance_for(spec, self.host))

    def train(self, spec: RunSpec, run_id: str, report: Report) -> PairingOutcome:
        with PhaseClock().current() as clock:
            return self._train(spec, run_id, report, clock)

    def _train(self, spec: RunSpec, run_id: str, report: Report, clock: PhaseClock) -> PairingOutcome:
        client = self.client
        family = self.host.model.get(spec.family).factory(spec.family_options)
        buffer = MetricBuffer(client, run_id)
        started = time.perf_counter()
        report("phase", "preparing data")
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
            env = record.env_tags(environment(device))  # what the figures are tied to, failed runs' too
            client.log_batch(run_id, tags=[RunTag(Tag.DEVICE, device.type)] + [RunTag(k, v) for k, v in env.items()])
            buffer.log(PERF["params"], count_parameters(model), 0)
            report("total", planned_steps(task, spec.train))
            result = fit(task, model, spec.train, seed=spec.seed, device=device, log_metric=buffer.log,
                         on_step=lambda step, loss: report("step", (step, loss)),
                         on_phase=lambda phase: report("phase", phase))
            wall = time.perf_counter() - started
            buffer.log(PERF["tokens_per_s"], result.train_tokens / max(result.train_seconds, 1e-9), result.steps)
            buffer.log(PERF["wall_s"], wall, result.steps)
            buffer.log(PERF["train_s"], result.train_seconds, result.steps)
            buffer.log(PERF["peak_mem_mib"], result.peak_mem_mib, result.steps)
            buffer.log(PERF["steps"], result.steps, result.steps)
            buffer.flush()
            self._log_evaluation(run_id, result.test)
            for override in spec.evaluate_with:
                report("phase", f"evaluating test with {override.name}")
                self._evaluate_override(run_id, task, model, spec, device, override, buffer)
            self._log_pictures(run_id, task, model, result, report)
            if spec.train.save_checkpoint:
                self._log_checkpoint(run_id, model)
            self._log_phases(buffer, clock, result.steps)
            client.set_terminated(run_id, "FINISHED")
            return PairingOutcome(spec, "FINISHED", run_id, dict(buffer.latest))
        except KeyboardInterrupt:
            _quietly(buffer.flush)
            _quietly(lambda: client.set_terminated(run_id, "KILLED"))
            raise
        except Exception as exc:
            self._log_phases(buffer, clock, 0)
            client.log_text(run_id, traceback.format_exc(), record.TRACEBACK)
            message = str(exc) if isinstance(exc, NonFiniteLossError) else f"{type(exc).__name__}: {exc}"
            client.set_tag(run_id, Tag.ERROR, message[:5000])
            client.set_terminated(run_id, "FAILED")
            report("note", f"[red]FAILED {spec.run_name}: {message}[/red]")
            return PairingOutcome(spec, "FAILED", run_id, dict(buffer.latest), message)

    # ------------------------------------------------------------------ internals

    def _task_for(self, spec: RunSpec) -> Task:
        """One prepared task per (name, options) per process, shared by all its models and seeds."""
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
        with attention_options_override(model, override.attention_options) as changed:
            with phase(EVAL):
                evaluation = evaluate_split(task, model, "test", spec.train, device)
        for name, value in evaluation.metrics.items():
            buffer.log(record.override_prefix(override.name) + name, float(value), 0)
        buffer.log(record.override_prefix(override.name) + "attention_modules_changed", changed, 0)
        buffer.flush()

    def _log_pictures(self, run_id: str, task: Task, model: torch.nn.Module, result, report: Report) -> None:
        """Training curves and attention maps; a picture that fails never fails the run."""
        try:
            from .pictures import log_run_pictures  # matplotlib: imported when the first run ends

            with phase(PICTURES):
                log_run_pictures(self.client, run_id, task, model, result)
        except Exception as exc:
            report("note", f"[yellow]warning: pictures for run {run_id[:8]} failed: {type(exc).__name__}: {exc}[/yellow]")

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


def _quietly(action) -> None:
    """Best effort while interrupted: the orchestrator closes what this could not."""
    try:
        action()
    except Exception:
        pass
