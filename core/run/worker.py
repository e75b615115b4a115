"""One unit of work: claim a pairing, then train it. The same code runs in the invoking process,
in a local worker process and in a Ray task; a :class:`GridJob` is all it needs (small, picklable).

A worker rebuilds the grid from the job (its own plugin discovery, its own MLflow client) and
checks that each pairing's run_key matches the submitter's: a node with other plugin code would
otherwise record its results under the submitter's key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ExperimentFile, RunSpec, expand_grid
from ..config.execution import ExecutionConfig, usable_cores
from . import claims
from .claims import Heartbeat
from .pairing import PairingTrainer, Report
from .provenance import attach_provenance
from .tracking import open_client


@dataclass
class GridJob:
    """Everything a worker needs to train any pairing of one invocation's grid."""

    raw: dict  # the grid file after --set
    source: str
    plugin_modules: list[str]
    tracking_uri: str
    experiment_id: str
    parent_id: str
    run_keys: list[str]  # the submitter's run_key per pairing index
    execution: ExecutionConfig
    cache_dir: str
    device: str | None = None
    threads: int | None = None  # torch threads per worker process (None: leave torch's choice)


@dataclass
class UnitResult:
    """What a worker sends back (plain data: it crosses process and node boundaries)."""

    index: int
    status: str  # FINISHED | FAILED | KILLED | SKIPPED (finished elsewhere) | CLAIMED (live elsewhere)
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    holder: str = ""  # for CLAIMED / SKIPPED: "host:pid (run abcd1234)"


class Worker:
    """Claims and trains pairings of one job in this process."""

    def __init__(self, job: GridJob, host=None, specs: list[RunSpec] | None = None, heartbeat: Heartbeat | None = None):
        from ..plugin_host import get_host

        self.job = job
        self.host = host or get_host(job.plugin_modules)
        self.specs = specs if specs is not None else self._expand()
        self.client = open_client(job.tracking_uri, ready=True)  # the submitter created and migrated it
        self.heartbeat = heartbeat or Heartbeat(job.tracking_uri, job.execution.heartbeat_every_s)
        self.trainer = PairingTrainer(self.client, self.host, cache_dir=Path(job.cache_dir), device=job.device)

    def _expand(self) -> list[RunSpec]:
        experiment = ExperimentFile.model_validate(self.job.raw)
        specs = expand_grid(experiment, self.host, source=self.job.source)
        attach_provenance(specs, self.host, experiment.execution.provenance_in_run_key)
        return specs

    def run(self, index: int, report: Report) -> UnitResult:
        spec, lease = self.specs[index], self.job.execution
        if spec.run_key != self.job.run_keys[index]:
            return UnitResult(index, "FAILED", error=(
                f"this worker ({claims.owner_id()}) computes run_key {spec.run_key} for {spec.run_name}, the submitter "
                f"{self.job.run_keys[index]}: install the same plugins (and versions) on every node; this worker has "
                + ", ".join(f"{part}: {text}" for part, text in spec.provenance.items())))
        state = claims.pairing_state(self.client, self.job.experiment_id, spec.run_key, lease.lease_s)
        if state.finished is not None:
            return _elsewhere(index, "SKIPPED", state.finished)
        if state.live:
            return _elsewhere(index, "CLAIMED", state.live[0])
        for line in claims.close_stale(self.client, state.stale, lease.lease_s):
            report("note", f"[yellow]{line}[/yellow]")
        won = claims.claim(self.client, self.job.experiment_id, spec.run_name, self.trainer.child_tags(spec, self.job.parent_id),
                           spec.run_key, lease_s=lease.lease_s, settle_s=lease.settle_s, parent_id=self.job.parent_id)
        if not won.won:
            return _elsewhere(index, "SKIPPED" if won.finished else "CLAIMED", won.winner)
        report("run", won.run_id)
        self.heartbeat.add(won.run_id)
        try:
            outcome = self.trainer.train(spec, won.run_id, report)
        finally:
            self.heartbeat.discard(won.run_id)
        return UnitResult(index, outcome.status, outcome.run_id, outcome.metrics, outcome.error)


def _elsewhere(index: int, status: str, run) -> UnitResult:
    return UnitResult(index, status, run.info.run_id, dict(run.data.metrics) if status == "SKIPPED" else {},
                      holder=claims.holder_text(run))


# One Worker per process and job: a worker process or Ray worker trains many pairings of a grid
# and keeps its plugins, MLflow client and prepared tasks between them.
_workers: dict[str, Worker] = {}


def worker_for(job: GridJob) -> Worker:
    if job.parent_id not in _workers:
        if job.threads:
            import torch

            torch.set_num_threads(job.threads)
        _workers[job.parent_id] = Worker(job)
    return _workers[job.parent_id]


def default_threads(workers: int) -> int:
    """Torch threads per worker when the grid sets none: the cores shared out, at least one."""
    return max(1, usable_cores() // workers)
