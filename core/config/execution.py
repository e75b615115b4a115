"""How a grid is executed (the grid file's ``execution:`` section; ``attnbench run`` flags override it).

None of these settings changes a result, so none of them is part of a pairing's run_key
(``provenance_in_run_key`` decides what goes into the key, and is itself left out).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# what --workers and execution.workers accept, in the words both error messages use
WORKERS_VALID = "a number of 1 or more, or auto (one per CPU core)"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class ExecutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workers: int = Field(1, ge=1, description="pairings trained at once (local processes, or Ray tasks in flight); "
                                              "auto: one per CPU core this process may use")
    executor: Literal["local", "ray"] = Field("local", description="local: worker processes on this machine; ray: Ray tasks")
    ray_address: str | None = Field(None, description="an existing Ray cluster (host:port or ray://host:port); default: a local ray.init()")
    lease_s: float = Field(300.0, gt=0, description="a RUNNING run whose heartbeat is older than this is stale (its worker died)")
    heartbeat_s: float | None = Field(None, gt=0, description="how often a live run refreshes its heartbeat; default min(30, lease_s / 4)")
    settle_s: float = Field(1.0, ge=0, description="how long a new claim waits before checking for a rival claim")
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
