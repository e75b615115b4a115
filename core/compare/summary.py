"""Summarise a grid's child runs per task.

Models are summarised as mean ± sample std over seeds (with n), compared with the task's
baseline (a model whose family declared itself a no-attention baseline, ``Tag.BASELINE``;
with several, the best one, so a claimed gain is a gain over the strongest baseline), and
tested for significance on the saved predictions with the test the task declares
(``Task.significance``, looked up through the plugin host). Runs that did not finish are
listed separately and never enter a mean. Grids with ``evaluate_with`` also get their
trained-with x evaluated-with matrices (:mod:`.matrix`). Trivial baselines a task computed
from the data alone (``test/trivial_<name>_<metric>``, :func:`attnbench.run.record.trivial_metric`)
are no model: they are pooled per task into reference rows, outside the ranking and the tests.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from .. import significance
from ..errors import BadInputError
from ..run.record import PERF, TEST, RunRecord, is_trivial_metric, parse_trivial_metric
from .matrix import EvalMatrix, matrices_of
from .read import fetch_child_runs, find_experiment, read_predictions, select_attempts
from .stats import Stat

PERF_COLUMNS = {name: PERF[name] for name in ("params", "tokens_per_s", "wall_s")}
BUCKET_METRIC = re.compile(r"^test/(?P<metric>[a-z0-9]+)_len_(?P<lo>\d+)_(?P<hi>\d+|inf)$")


@dataclass
class ModelRow:
    """One model of one task: its metrics over seeds and its comparison with the baseline."""

    model: str
    family: str
    attention: str
    n: int
    seeds: list[int]
    metrics: dict[str, Stat]
    perf: dict[str, Stat]
    buckets: dict[str, Stat] = field(default_factory=dict)  # e.g. test/bleu_len_1_10
    baseline_family: bool = False  # its family declared itself a no-attention baseline
    is_baseline: bool = False  # the row the task's deltas and tests are measured against
    delta: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    significance_note: str = ""
    run_ids: list[str] = field(default_factory=list)


@dataclass
class TaskSummary:
    task: str
    kind: str
    primary_metric: str
    greater_is_better: bool
    metric_scale: float | None
    baseline: str | None
    significance_method: str
    rows: list[ModelRow]
    # trivial baseline -> {test/<metric>: Stat over every finished run of the task}
    trivial_baselines: dict[str, dict[str, Stat]] = field(default_factory=dict)

    def metric_names(self, headline: bool = False) -> list[str]:
        """Primary metric first, then the other test metrics. ``headline`` leaves out the
        breakdowns of the primary metric (``<primary>_*``: per length bucket, per construction),
        which would not fit a terminal."""
        names = {m for row in self.rows for m in row.metrics}
        primary = TEST + self.primary_metric
        rest = sorted(n for n in names if n != primary)
        if headline:
            rest = [n for n in rest if not n.startswith(primary + "_")]
        return [primary] + rest


def bucket_names(task: "TaskSummary", metric: str) -> list[str]:
    """The task's logged length buckets of ``metric`` (``test/bleu_len_1_10``, ...), shortest first."""
    def order(name: str) -> tuple[int, float]:
        m = BUCKET_METRIC.match(name)
        return int(m["lo"]), math.inf if m["hi"] == "inf" else int(m["hi"])

    return sorted({b for row in task.rows for b in row.buckets if BUCKET_METRIC.match(b)["metric"] == metric},
                  key=order)


def bucket_label(name: str) -> str:
    """``test/bleu_len_11_20`` -> ``11–20``; ``test/bleu_len_31_inf`` -> ``31+``."""
    m = BUCKET_METRIC.match(name)
    return f"{m['lo']}+" if m["hi"] == "inf" else f"{m['lo']}–{m['hi']}"


@dataclass
class Comparison:
    """Everything ``attnbench compare`` shows: per-task summaries and unfinished runs."""

    experiment: str
    parent_run_id: str | None
    tasks: list[TaskSummary]
    unfinished: list[RunRecord]
    superseded: int = 0
    records: list[RunRecord] = field(default_factory=list, repr=False)  # every child run read
    matrices: list[EvalMatrix] = field(default_factory=list)  # grids with evaluate_with
    reference: str | None = None  # a model the user chose as every task's baseline (--baseline)
    environments: dict[str, int] = field(default_factory=dict)  # what computed the finished runs -> how many

    @property
    def known_environments(self) -> dict[str, int]:
        """``environments`` without the runs logged before attnbench recorded it."""
        return {env: n for env, n in self.environments.items() if env}

    @property
    def mixed_environments(self) -> bool:
        """Finished runs from more than one torch build or processor: their digits need not agree."""
        return len(self.known_environments) > 1

    def to_dict(self) -> dict:
        return {
            "experiment": self.experiment,
            "parent_run_id": self.parent_run_id,
            "tasks": [asdict(t) for t in self.tasks],
            "matrices": [m.to_dict() for m in self.matrices],
            "unfinished": [_unfinished_dict(r) for r in self.unfinished],
            "superseded_attempts": self.superseded,
            "environments": self.environments,
            "alpha": significance.ALPHA,
        }


def _unfinished_dict(r: RunRecord) -> dict:
    return {"run_id": r.run_id, "name": r.name, "status": r.status, "task": r.task,
            "model": r.model, "seed": r.seed, "error": r.error}


def _aggregate(model: str, runs: list[RunRecord]) -> ModelRow:
    names = {m for r in runs for m in r.metrics if m.startswith(TEST)}
    stats = {m: s for m in sorted(names) if (s := Stat.of([r.metrics.get(m) for r in runs])) is not None}
    metrics = {m: s for m, s in stats.items() if not BUCKET_METRIC.match(m) and not is_trivial(m)}
    buckets = {m: s for m, s in stats.items() if BUCKET_METRIC.match(m)}
    perf = {k: s for k, m in PERF_COLUMNS.items() if (s := Stat.of([r.metrics.get(m) for r in runs])) is not None}
    return ModelRow(
        model=model, family=runs[0].family, attention=runs[0].attention, n=len(runs),
        baseline_family=runs[0].baseline,
        seeds=sorted(r.seed for r in runs if r.seed is not None), metrics=metrics, perf=perf, buckets=buckets,
        run_ids=[r.run_id for r in runs],
    )


def is_trivial(metric: str) -> bool:
    return metric.startswith(TEST) and is_trivial_metric(metric)


def _trivial_baselines(runs: list[RunRecord], rows: list[ModelRow]) -> dict[str, dict[str, Stat]]:
    """The task's trivial baselines, each metric pooled over all its runs (they saw the same data,
    so the std is 0 unless runs of several configurations are compared)."""
    own = {m.removeprefix(TEST) for row in rows for m in row.metrics}
    out: dict[str, dict[str, Stat]] = {}
    for name in sorted({m for r in runs for m in r.metrics if is_trivial(m)}):
        parsed = parse_trivial_metric(name.removeprefix(TEST), own)
        if parsed and (stat := Stat.of([r.metrics.get(name) for r in runs])) is not None:
            out.setdefault(parsed[0], {})[TEST + parsed[1]] = stat
    return out


def declared_test(host, task: str) -> significance.SignificanceTest | None:
    """The significance test the task plugin declares, or None (not installed, or no test)."""
    if host is None or task not in host.task:
        return None
    return host.task.get(task).factory.significance


def _significance(task: TaskSummary, test: significance.SignificanceTest | None, installed: bool,
                  groups: dict[str, list[RunRecord]], client, with_tests: bool) -> None:
    baseline_row = next((r for r in task.rows if r.is_baseline), None)
    if baseline_row is None:
        for row in task.rows:
            row.significance_note = "no baseline in this task (no family declared is_baseline)"
        return
    others = [row for row in task.rows if row is not baseline_row]
    if not with_tests:
        for row in others:
            row.significance_note = "not computed (--no-significance)"
        return
    if test is None:
        note = (f"the {task.task} task declares no significance test for {task.primary_metric}" if installed
                else f"task plugin {task.task!r} is not installed here, so its significance test is unknown")
        for row in others:
            row.significance_note = note
        return

    def by_seed(runs):
        preds = {}
        for r in runs:
            p = read_predictions(r, client)
            if p is not None and r.seed is not None:
                preds[r.seed] = p
        return preds

    base_preds = by_seed(groups[baseline_row.model])
    samples = {}
    for row in others:
        sample = significance.align(by_seed(groups[row.model]), base_preds)
        if sample.keys:
            samples[row.model] = sample
        else:
            row.significance_note = "no predictions paired with the baseline (same seed and example id)"
    p_values = test.p_values(samples) if samples else {}
    for row in others:
        if row.model in p_values:
            row.p_value = p_values[row.model]
            row.significant = row.p_value < significance.ALPHA
            row.significance_note = f"{len(samples[row.model].keys)} paired examples"


def summarize(records: list[RunRecord], *, experiment: str, parent_run_id: str | None = None,
              client=None, with_significance: bool = True, host=None, reference: str | None = None) -> Comparison:
    """Aggregate child runs into a :class:`Comparison` (see the module docstring).

    ``host``: the PluginHost whose tasks declare the significance tests; by default the
    discovered plugins (loaded only when a test is to run). ``reference``: a model label to
    measure deltas and tests against instead of the no-attention baseline, in every task
    that has it (e.g. ``rnn-lstm+additive``: does the transformer beat the RNN *with*
    attention?); a label no task has is an error naming the labels there are."""
    finished, unfinished, superseded = select_attempts(records)
    if with_significance and host is None and finished:
        from ..plugin_host import get_host

        host = get_host()
    by_task: dict[str, dict[str, list[RunRecord]]] = {}
    for r in finished:
        by_task.setdefault(r.task, {}).setdefault(r.model, []).append(r)
    if reference is not None and not any(reference in groups for groups in by_task.values()):
        labels = sorted({model for groups in by_task.values() for model in groups})
        raise BadInputError(f"--baseline: no finished run of model {reference!r} in experiment {experiment!r}; "
                            f"models there: {', '.join(labels) or 'none'}")
    tasks = []
    for task_name in sorted(by_task):
        groups = by_task[task_name]
        first = next(iter(groups.values()))[0]
        primary, better = first.primary_metric, first.greater_is_better
        rows = [_aggregate(model, runs) for model, runs in groups.items()]
        key = TEST + primary

        def quality(row, _key=key, _better=better):
            stat = row.metrics.get(_key)
            if stat is None:
                return -math.inf
            return stat.mean if _better else -stat.mean

        if reference is not None and reference in groups:
            candidates = [row for row in rows if row.model == reference]
        else:
            candidates = [row for row in rows if row.baseline_family]
        baseline = max(candidates, key=quality) if candidates else None
        if baseline is not None:
            baseline.is_baseline = True
            base_stat = baseline.metrics.get(key)
            for row in rows:
                stat = row.metrics.get(key)
                if row is not baseline and stat is not None and base_stat is not None:
                    row.delta = stat.mean - base_stat.mean
        rows.sort(key=lambda row: (not row.is_baseline, -quality(row), row.model))
        test = declared_test(host, task_name)
        summary = TaskSummary(task_name, first.kind, primary, better, first.metric_scale,
                              baseline.model if baseline else None, test.method if test else "", rows,
                              _trivial_baselines([r for runs in groups.values() for r in runs], rows))
        _significance(summary, test, host is not None and task_name in host.task, groups, client, with_significance)
        tasks.append(summary)
    environments: dict[str, int] = {}
    for r in finished:
        environments[r.environment] = environments.get(r.environment, 0) + 1
    return Comparison(experiment, parent_run_id, tasks, unfinished, superseded, records, matrices_of(finished),
                      reference, environments)


def compare_experiment(client, experiment_name: str, parent_run_id: str | None = None,
                       with_significance: bool = True, host=None, reference: str | None = None) -> Comparison:
    """Fetch and summarise one experiment (optionally one parent run of it)."""
    exp = find_experiment(client, experiment_name)
    records = fetch_child_runs(client, exp.experiment_id, parent_run_id)
    return summarize(records, experiment=experiment_name, parent_run_id=parent_run_id,
                     client=client, with_significance=with_significance, host=host, reference=reference)
