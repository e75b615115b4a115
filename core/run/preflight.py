"""Checks before the first pairing trains: what would otherwise fail only after training starts.

- the device exists (``--device cuda`` without CUDA);
- every task loads its data once (missing path, corrupt file, missing columns, empty split,
  labels out of range: tasks raise BadInputError from ``prepare()``); the tokenizers it
  trains land in the same cache the runner reads, so the runner does not train them again;
- every model builds, on PyTorch's ``meta`` device (shapes only, no memory), so families
  refuse bad sizes (``n_heads`` not dividing ``d_model``) and the parameter count is exact;
- the memory that training needs is estimated and refused past a limit
  (``attnbench run --max-memory-gib``).

A problem here exits 2 before anything is written to the store. A failure that only shows
while training (a NaN loss, a plugin bug) still becomes a FAILED run, and the grid goes on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import RunSpec
from ..errors import BadInputError
from ..options import OptionsError, Problem, short_repr
from ..plugin_host import PluginHost
from .training import planned_steps, select_device

DEFAULT_MAX_MEMORY_GIB = 8.0
# Training with Adam holds four copies of every parameter (weights, gradients, two moments).
BYTES_PER_PARAMETER = 4 * 4


def cache_dir() -> Path:
    """The task cache the runner uses too (tokenizers, generated data)."""
    return Path(os.environ.get("ATTNBENCH_CACHE", ".attnbench_cache"))


@dataclass
class ModelEstimate:
    task: str
    model_label: str
    params: int

    @property
    def training_gib(self) -> float:
        return self.params * BYTES_PER_PARAMETER / 2**30


@dataclass
class PreflightReport:
    estimates: list[ModelEstimate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # planned training steps per run_key: workers take the longest pairings first (runner.py)
    steps: dict[str, int] = field(default_factory=dict)

    def params_of(self, spec: RunSpec) -> int | None:
        return next((e.params for e in self.estimates if (e.task, e.model_label) == (spec.task, spec.model_label)), None)


def preflight(specs: list[RunSpec], host: PluginHost, *, device: str | None = None,
              max_memory_gib: float = DEFAULT_MAX_MEMORY_GIB, source: str = "grid") -> PreflightReport:
    """Raise an OptionsError listing every problem found, or return the size estimates."""
    problems: list[Problem] = []
    report = PreflightReport()

    for requested in sorted({device or spec.train.device for spec in specs}):
        try:
            select_device(requested)
        except BadInputError as exc:
            problems.append(Problem("--device" if device else "train.device", str(exc).split(": ", 1)[-1]))

    ios, tasks = {}, {}
    for spec in _unique(specs, lambda s: (s.task, json.dumps(s.task_options.model_dump(mode="json"), sort_keys=True))):
        task_cls = host.task.get(spec.task).factory
        try:
            tasks[spec.task] = task_cls(spec.task_options, cache_dir=cache_dir())
            ios[spec.task] = tasks[spec.task].prepare()
            if spec.train.group_by_length and tasks[spec.task].example_lengths("train") is None:
                problems.append(Problem("train.group_by_length", f"task {spec.task!r} does not report the lengths of "
                                        f"its examples (its plugin has no Task.example_lengths); set it to false"))
        except BadInputError as exc:
            problems.append(Problem("", str(exc)))
        except Exception as exc:  # a plugin's own error while reading data is still about the data
            problems.append(Problem(f"tasks.{spec.task}", f"loading the data failed: {type(exc).__name__}: "
                                                          f"{short_repr(str(exc), 200)[1:-1]}"))

    for spec in _unique(specs, lambda s: (s.task, s.model_label)):
        if spec.task not in ios:
            continue
        family = host.model.get(spec.family).factory(spec.family_options)
        try:
            family.validate(host)
            with torch.device("meta"):  # shapes only: a 40000-wide model costs nothing here
                model = family.build(ios[spec.task], spec.dims, host)
        except BadInputError as exc:
            problems.append(Problem(f"model {spec.model_label} on task {spec.task}", str(exc)))
            continue
        except Exception as exc:  # some modules cannot be built on meta; training will tell
            report.warnings.append(f"could not size {spec.model_label} for {spec.task} before training "
                                   f"({type(exc).__name__}: {short_repr(str(exc), 120)[1:-1]})")
            continue
        estimate = ModelEstimate(spec.task, spec.model_label, sum(p.numel() for p in model.parameters()))
        report.estimates.append(estimate)
        if max_memory_gib and estimate.training_gib > max_memory_gib:
            problems.append(Problem(
                f"model {spec.model_label} on task {spec.task}",
                f"{estimate.params:,} parameters need about {estimate.training_gib:,.1f} GiB to train "
                f"({BYTES_PER_PARAMETER} bytes each: weights, gradients, Adam moments), over the "
                f"{max_memory_gib:g} GiB limit; shrink model.d_model / n_layers, or raise the limit with "
                f"--max-memory-gib"))
    if problems:
        raise OptionsError(problems, source=f"{source}: preflight (nothing was trained)")
    for spec in specs:
        if spec.task in ios:
            try:
                report.steps[spec.run_key] = planned_steps(tasks[spec.task], spec.train)
            except Exception:  # a plugin's batching bug shows when the pairing trains, not here
                pass
    return report


def _unique(specs, key):
    seen = {}
    for spec in specs:
        seen.setdefault(key(spec), spec)
    return list(seen.values())
