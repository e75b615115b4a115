"""The trained-with x evaluated-with matrix of a grid that uses ``evaluate_with``.

After training, the runner evaluates the test split again once per ``evaluate_with`` entry
and logs ``test_<name>/<metric>`` next to the usual ``test/<metric>``. This module turns a
grid's runs into one matrix per task: a row per model label (what it was trained with), a
column per evaluation (``as trained`` first, then the entries in grid order, from the
``evaluate_with`` param), each cell the mean over seeds. It is the layout of Table 2 of the
Reformer paper (Kitaev et al. 2020). :func:`~attnbench.compare.summary.summarize` puts the
matrices into the :class:`~attnbench.compare.summary.Comparison`, so every output format has them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable

from ..run.record import TEST, RunRecord, override_prefix
from .read import select_attempts
from .stats import Stat

AS_TRAINED = "as trained"
EVAL_METRIC = re.compile(r"^test_(?P<name>[A-Za-z0-9_]+)/(?P<metric>.+)$")
EVALUATE_WITH_PARAM = "evaluate_with"  # the grid's entries, as the runner logs them (JSON)


@dataclass
class EvalMatrix:
    """One task's matrix: ``cells[(row, column)]`` is a :class:`~attnbench.compare.stats.Stat` over seeds."""

    task: str
    metric: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Stat] = field(default_factory=dict)
    metric_scale: float | None = None  # the task's declared scale of ``metric`` (1: a fraction)

    def value(self, row: str, column: str) -> float | None:
        """Mean over seeds, or None where that model was not evaluated that way."""
        stat = self.cells.get((row, column))
        return None if stat is None else stat.mean

    def metric_key(self, column: str) -> str:
        """The logged metric behind a column: ``test/accuracy`` or ``test_lsh2/accuracy``."""
        return TEST + self.metric if column == AS_TRAINED else override_prefix(column) + self.metric

    def cell_text(self, row: str, column: str) -> str:
        stat = self.cells.get((row, column))
        if stat is None:
            return "—"
        scale, digits = (100.0, 1) if self.in_percent else (1.0, 3)
        text = f"{stat.mean * scale:.{digits}f}"
        if stat.std is not None:
            text += f" ± {stat.std * scale:.{digits}f}"
        return text

    @property
    def in_percent(self) -> bool:
        """Fractions (a task scale of 1, e.g. accuracy) are shown in percent, as the paper's table has them."""
        return self.metric_scale == 1.0

    @property
    def title(self) -> str:
        scaled = " (%)" if self.in_percent else ""
        return f"{self.task}: test {self.metric}{scaled}; rows: trained with, columns: evaluated with"

    def to_dict(self) -> dict:
        cells = [{"trained_with": row, "evaluated_with": column, "metric": self.metric_key(column),
                  "mean": stat.mean, "std": stat.std, "n": stat.n}
                 for (row, column), stat in self.cells.items()]
        return {"task": self.task, "metric": self.metric, "metric_scale": self.metric_scale,
                "rows": self.rows, "columns": self.columns, "cells": cells}

    def to_table(self):
        """A rich table for the terminal."""
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        table.add_column("trained with", no_wrap=True)
        for column in self.columns:
            table.add_column(column, justify="right")
        for row in self.rows:
            table.add_row(row, *(self.cell_text(row, c) for c in self.columns))
        return table

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| trained with | " + " | ".join(self.columns) + " |",
                 "|---|" + "---:|" * len(self.columns)]
        lines += [f"| {row} | " + " | ".join(self.cell_text(row, c) for c in self.columns) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def eval_matrices(runs: Iterable, metric: str | None = None) -> list[EvalMatrix]:
    """One :class:`EvalMatrix` per task whose runs logged ``test_<name>/...`` metrics.

    ``runs``: :class:`~attnbench.run.record.RunRecord` s (as ``fetch_child_runs`` returns them)
    or the ``mlflow.entities.Run`` s of ``MlflowClient.search_runs``. Only finished child runs
    count, the latest attempt of each slot (:func:`~attnbench.compare.read.select_attempts`).
    ``metric``: which metric fills the cells; default each task's primary metric."""
    records = [r if isinstance(r, RunRecord) else RunRecord.from_mlflow(r) for r in runs]
    finished, _, _ = select_attempts([r for r in records if r.is_child])
    return matrices_of(finished, metric)


def matrices_of(finished: list[RunRecord], metric: str | None = None) -> list[EvalMatrix]:
    """:func:`eval_matrices` of runs already selected (one finished attempt per slot)."""
    by_task: dict[str, list[RunRecord]] = {}
    for run in finished:
        by_task.setdefault(run.task, []).append(run)
    matrices = []
    for task in sorted(by_task):
        task_runs = sorted(by_task[task], key=lambda r: r.start_time)
        wanted = metric or task_runs[0].primary_metric or "accuracy"
        columns = _columns(task_runs, wanted)
        if not columns:
            continue
        scale = task_runs[0].metric_scale if wanted == task_runs[0].primary_metric else None
        rows = list(dict.fromkeys(r.model for r in task_runs))  # grid order
        matrix = EvalMatrix(task, wanted, rows, [AS_TRAINED, *columns], metric_scale=scale)
        for row in rows:
            seeds = [r for r in task_runs if r.model == row]
            for column in matrix.columns:
                key = matrix.metric_key(column)
                stat = Stat.of([r.metrics[key] for r in seeds if key in r.metrics])
                if stat is not None:
                    matrix.cells[(row, column)] = stat
        matrices.append(matrix)
    return matrices


def _columns(runs: list[RunRecord], metric: str) -> list[str]:
    """Evaluation names in grid order (from the ``evaluate_with`` param), then any others found."""
    found = {m["name"] for r in runs for key in r.metrics if (m := EVAL_METRIC.match(key)) and m["metric"] == metric}
    ordered: list[str] = []
    for run in runs:
        try:
            entries = json.loads(run.params.get(EVALUATE_WITH_PARAM, "[]"))
        except (TypeError, ValueError):
            entries = []
        ordered += [e["name"] for e in entries if isinstance(e, dict) and e.get("name") in found]
    ordered = list(dict.fromkeys(ordered))
    return ordered + sorted(found - set(ordered), key=_natural_key)


def _natural_key(name: str) -> list:
    """``lsh2`` before ``lsh10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
