"""The trained-with x evaluated-with matrix of a grid that uses ``evaluate_with``.

After training, the runner evaluates the test split again once per ``evaluate_with`` entry
and logs ``test_<name>/<metric>`` next to the usual ``test/<metric>``. This module turns a
grid's runs into one matrix per task: a row per model label (what it was trained with), a
column per evaluation (``as trained`` first, then the entries in grid order), each cell the
mean over seeds. It is the layout of Table 2 of the Reformer paper (Kitaev et al. 2020).

Input is what MLflow's search returns: the DataFrame of ``mlflow.search_runs`` or the runs
of ``MlflowClient.search_runs`` (or ``attnbench.compare.read.fetch_child_runs``' records, which
carry no params: columns then come in natural order, ``full, lsh1, lsh2, ...``). Only finished child runs count; of several attempts of one
``(task, model, seed)`` the latest is used.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from rich.table import Table

from ..run.record import RunRecord, Tag
from .summary import Stat

AS_TRAINED = "as trained"
EVAL_METRIC = re.compile(r"^test_(?P<name>[A-Za-z0-9_]+)/(?P<metric>.+)$")


@dataclass
class _Run:
    """The fields of one run the matrix needs, whatever MLflow API it came from."""

    run_id: str
    status: str
    start_time: float
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class EvalMatrix:
    """One task's matrix: ``cells[(row, column)]`` is a :class:`~attnbench.compare.Stat` over seeds."""

    task: str
    metric: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Stat] = field(default_factory=dict)

    def value(self, row: str, column: str) -> float | None:
        """Mean over seeds, or None where that model was not evaluated that way."""
        stat = self.cells.get((row, column))
        return None if stat is None else stat.mean

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
        """Accuracies logged as fractions (0..1) are shown in percent, as the paper's table has them."""
        return "accuracy" in self.metric and all(abs(s.mean) <= 1.0 for s in self.cells.values())

    @property
    def title(self) -> str:
        scaled = " (%)" if self.in_percent else ""
        return f"{self.task}: test {self.metric}{scaled}; rows: trained with, columns: evaluated with"

    def to_table(self) -> Table:
        """A rich table for the terminal."""
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


def eval_matrices(runs, metric: str | None = None) -> list[EvalMatrix]:
    """One :class:`EvalMatrix` per task whose runs logged ``test_<name>/...`` metrics.

    ``metric``: which metric fills the cells; default each task's primary metric (the
    ``attnbench.primary_metric`` tag), else ``accuracy``."""
    by_task: dict[str, list[_Run]] = {}
    for run in _latest_finished(_normalise(runs)):
        by_task.setdefault(run.tags.get(Tag.TASK, "?"), []).append(run)
    matrices = []
    for task in sorted(by_task):
        task_runs = sorted(by_task[task], key=lambda r: r.start_time)
        wanted = metric or task_runs[0].tags.get(Tag.PRIMARY_METRIC) or "accuracy"
        columns = _columns(task_runs, wanted)
        if not columns:
            continue
        rows = list(dict.fromkeys(r.tags.get(Tag.MODEL, r.run_id) for r in task_runs))  # grid order
        matrix = EvalMatrix(task, wanted, rows, [AS_TRAINED, *columns])
        for row in rows:
            seeds = [r for r in task_runs if r.tags.get(Tag.MODEL, r.run_id) == row]
            for column in matrix.columns:
                key = f"test/{wanted}" if column == AS_TRAINED else f"test_{column}/{wanted}"
                stat = Stat.of([r.metrics[key] for r in seeds if key in r.metrics])
                if stat is not None:
                    matrix.cells[(row, column)] = stat
        matrices.append(matrix)
    return matrices


def _columns(runs: list[_Run], metric: str) -> list[str]:
    """Evaluation names in grid order (from the ``evaluate_with`` param), then any others found."""
    found = {m["name"] for r in runs for key in r.metrics if (m := EVAL_METRIC.match(key)) and m["metric"] == metric}
    ordered: list[str] = []
    for run in runs:
        try:
            entries = json.loads(run.params.get("evaluate_with", "[]"))
        except (TypeError, ValueError):
            entries = []
        ordered += [e["name"] for e in entries if isinstance(e, dict) and e.get("name") in found]
    ordered = list(dict.fromkeys(ordered))
    return ordered + sorted(found - set(ordered), key=_natural_key)


def _natural_key(name: str) -> list:
    """``lsh2`` before ``lsh10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _latest_finished(runs: list[_Run]) -> list[_Run]:
    """Finished child runs, the latest attempt of each (task, model, seed)."""
    latest: dict[tuple, _Run] = {}
    for run in runs:
        if run.status != "FINISHED" or run.tags.get(Tag.ROLE, "child") != "child":
            continue
        key = (run.tags.get(Tag.TASK), run.tags.get(Tag.MODEL), run.tags.get(Tag.SEED))
        if None in key:
            key = (run.run_id,)
        if key not in latest or run.start_time > latest[key].start_time:
            latest[key] = run
    return list(latest.values())


def _normalise(runs) -> list[_Run]:
    """Runs from ``mlflow.search_runs`` (a pandas DataFrame) or ``MlflowClient.search_runs``."""
    if hasattr(runs, "to_dict") and hasattr(runs, "columns"):
        return [_from_row(row) for row in runs.to_dict("records")]
    runs = list(runs)
    if runs and isinstance(runs[0], RunRecord):
        return [_from_record(r) for r in runs]
    return [_Run(run.info.run_id, run.info.status, float(run.info.start_time or 0), dict(run.data.tags),
                 dict(run.data.params), dict(run.data.metrics)) for run in runs]


def _from_record(r: RunRecord) -> _Run:
    tags = {Tag.ROLE: "child", Tag.TASK: r.task, Tag.MODEL: r.model,
            Tag.PRIMARY_METRIC: r.primary_metric}
    if r.seed is not None:
        tags[Tag.SEED] = str(r.seed)
    return _Run(r.run_id, r.status, float(r.start_time), tags, {}, dict(r.metrics))


def _from_row(row: dict) -> _Run:
    def section(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and _present(v)}

    start = row.get("start_time")
    start = start.timestamp() * 1000 if hasattr(start, "timestamp") else float(start or 0)
    return _Run(str(row.get("run_id")), str(row.get("status")), start, section("tags."), section("params."),
                {k: float(v) for k, v in section("metrics.").items()})


def _present(value) -> bool:
    """DataFrame cells of runs that lack a column are NaN or None."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))
