"""How a grid is executed (the grid file's ``execution:`` section; ``attnbench run`` flags override it).

None of these settings changes a result, so none of them is part of a pairing's run_key
(``provenance_in_run_key`` decides what goes into the key, and is itself left out).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# what --workers and execution.workers accept, in the words both error messages use
WORKERS_VALID = "a number of 1 or more, or auto (one per CPU core)"


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one, capped by a
    container's CPU quota (``docker run --cpus 2`` on a 64-core host is 2)."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time per second this process's cgroup may use (Linux cgroups v2 or v1),
    or None where there is no limit or no cgroup to read."""
    own = _own_cgroup_v2()
    for cpu_max in ([root / own.lstrip("/") / "cpu.max"] if own else []) + [root / "cpu.max"]:
        text = _read(cpu_max)
        if text is not None:  # "max 100000" (no limit) or "<quota> <period>"
            quota, _, period = text.partition(" ")
            return None if quota == "max" else _ratio(quota, period)
    for folder in ("cpu", "cpu,cpuacct"):  # v1: a quota of -1 is no limit
        quota, period = _read(root / folder / "cpu.cfs_quota_us"), _read(root / folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return None if quota.startswith("-") else _ratio(quota, period)
    return None


def _own_cgroup_v2() -> str:
    """This process's cgroup v2 path (``0::/path`` in /proc/self/cgroup), or ""."""
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = float(quota), float(period)
    except ValueError:
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


class ExecutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workers: int = Field(1, ge=1, description="pairings trained at once (local processes, or Ray tasks in flight); "
                                              "auto: one per CPU core this process may use")
    executor: Literal["local", "ray"] = Field("local", description="local: worker processes on this machine; ray: Ray tasks")
    ray_address: str | None = Field(None, description="an existing Ray cluster (host:port or ray://host:port); default: a local ray.init()")
    lease_s: float = Field(300.0, gt=0, description="a RUNNING run whose heartbeat is older than this is stale (its worker died)")
    heartbeat_s: float | None = Field(None, gt=0, description="how often a live run refreshes its heartbeat; default min(30, lease_s / 4)")
    settle_s: float = Field(1.0, ge=0, description="how long a new claim waits before checking for a rival claim (only while another invocation of the grid runs)")
    provenance_in_run_key: bool = Field(
        True, description="put the providing plugins' distribution, version and source hash into the run_key")

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value):
        # resolved here, once, so everything downstream sees a number (results never depend on it)
        if value == "auto":
            return usable_cores()
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError(f"valid: {WORKERS_VALID}")
        return value

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self):
        if self.heartbeat_s is not None and self.heartbeat_s >= self.lease_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be shorter than lease_s ({self.lease_s})")
        return self

    @property
    def heartbeat_every_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else min(30.0, self.lease_s / 4)
