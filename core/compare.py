"""Read a grid's runs back from MLflow and summarise them per task.

One ``search_runs`` query per experiment fetches every child run (tags and latest metric
values come with it); predictions are read only for the significance tests. Models are
summarised as mean ± sample std over seeds (with n), compared with the task's rnn baseline
(family ``rnn``; with several rnn models, the best one, so a claimed gain is a gain over the
strongest baseline), and tested for significance on the saved predictions. Runs that did
not finish are listed separately and never enter a mean.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from . import significance
from .errors import BadInputError

CHILD_FILTER = "tags.`attnbench.role` = 'child'"
PREDICTIONS_FILE = "predictions.jsonl"
PERF_COLUMNS = {"params": "perf/params", "tokens_per_s": "perf/train_tokens_per_s", "wall_s": "perf/wall_s"}
BUCKET_METRIC = re.compile(r"^test/(?P<metric>[a-z0-9]+)_len_(?P<lo>\d+)_(?P<hi>\d+|inf)$")
PAGE_SIZE = 50000  # MLflow's maximum; a grid larger than this pages through the same query


@dataclass
class RunRecord:
    """The fields of one child run that a comparison needs."""

    run_id: str
    name: str
    status: str
    task: str
    kind: str
    family: str
    attention: str
    model: str
    seed: int | None
    run_key: str
    primary_metric: str
    greater_is_better: bool
    metrics: dict[str, float]
    artifact_uri: str
    parent_run_id: str | None
    start_time: int = 0
    error: str = ""  # the runner's attnbench.error tag on FAILED runs


@dataclass
class Stat:
    """Mean and sample standard deviation over seeds (std is None for a single seed)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat | None":
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return None
        arr = np.asarray(values, dtype=np.float64)
        return cls(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else None, int(arr.size))


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
    is_baseline: bool = False
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
    baseline: str | None
    significance_method: str
    rows: list[ModelRow]

    def metric_names(self, headline: bool = False) -> list[str]:
        """Primary metric first, then the other test metrics. ``headline`` leaves out the
        breakdowns of the primary metric (``<primary>_*``: per length bucket, per construction),
        which would not fit a terminal."""
        names = {m for row in self.rows for m in row.metrics}
        primary = f"test/{self.primary_metric}"
        rest = sorted(n for n in names if n != primary)
        if headline:
            rest = [n for n in rest if not n.startswith(primary + "_")]
        return [primary] + rest


@dataclass
class Comparison:
    """Everything ``attnbench compare`` shows: per-task summaries and unfinished runs."""

    experiment: str
    parent_run_id: str | None
    tasks: list[TaskSummary]
    unfinished: list[RunRecord]
    superseded: int = 0
    records: list[RunRecord] = field(default_factory=list, repr=False)  # every child run read

    def to_dict(self) -> dict:
        return {
            "experiment": self.experiment,
            "parent_run_id": self.parent_run_id,
            "tasks": [asdict(t) for t in self.tasks],
            "unfinished": [_unfinished_dict(r) for r in self.unfinished],
            "superseded_attempts": self.superseded,
            "alpha": significance.ALPHA,
        }


def _unfinished_dict(r: RunRecord) -> dict:
    return {"run_id": r.run_id, "name": r.name, "status": r.status, "task": r.task,
            "model": r.model, "seed": r.seed, "error": r.error}


def _run_record(run) -> RunRecord:
    tags = run.data.tags
    seed = tags.get("attnbench.seed")
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or tags.get("mlflow.runName", run.info.run_id),
        status=run.info.status,
        task=tags.get("attnbench.task", "?"),
        kind=tags.get("attnbench.kind", "?"),
        family=tags.get("attnbench.family", "?"),
        attention=tags.get("attnbench.attention", "?"),
        model=tags.get("attnbench.model", "?"),
        seed=int(seed) if seed not in (None, "") and str(seed).lstrip("-").isdigit() else None,
        run_key=tags.get("attnbench.run_key", run.info.run_id),
        primary_metric=tags.get("attnbench.primary_metric", ""),
        greater_is_better=tags.get("attnbench.greater_is_better", "true").lower() != "false",
        metrics=dict(run.data.metrics),
        artifact_uri=run.info.artifact_uri,
        parent_run_id=tags.get("mlflow.parentRunId"),
        start_time=run.info.start_time or 0,
        error=tags.get("attnbench.error", ""),
    )


def find_experiment(client, name: str):
    """The experiment called ``name``; BadInputError listing the existing ones otherwise."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        have = sorted(e.name for e in client.search_experiments())
        raise BadInputError(f"--experiment: no MLflow experiment named {name!r}; existing: {have}")
    return exp


def fetch_child_runs(client, experiment_id: str, parent_run_id: str | None = None) -> list[RunRecord]:
    """Every child run of the experiment (or of one parent run) in one filtered query."""
    filter_string = CHILD_FILTER
    if parent_run_id:
        if not re.fullmatch(r"[0-9a-fA-F]{8,64}", parent_run_id):
            raise BadInputError(f"--run: {parent_run_id!r} is not an MLflow run id (hex)")
        filter_string += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    records, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=PAGE_SIZE, page_token=token)
        records.extend(_run_record(r) for r in page)
        token = page.token
        if not token:
            return records


def latest_parent_run_id(client, experiment_id: str) -> str | None:
    """The most recent parent run of the experiment (where the summary gets logged)."""
    runs = client.search_runs([experiment_id], filter_string="tags.`attnbench.role` = 'parent'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def select_attempts(records: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord], int]:
    """Split into the runs to average and the unfinished ones to list; count the superseded.

    Attempts are grouped by slot ``(task, model, seed)``: a re-run of a grid retries
    pairings that did not finish, and a re-run with a changed config trains the slot again.
    The latest FINISHED attempt of a slot is used; unfinished attempts newer than it are
    listed (a failure after the last success is never hidden); older attempts are
    superseded. Runs without a seed tag form a slot each."""
    slots: dict[tuple, list[RunRecord]] = {}
    for r in records:
        key = (r.task, r.model, r.seed) if r.seed is not None else (r.run_id,)
        slots.setdefault(key, []).append(r)
    finished, unfinished, superseded = [], [], 0
    for attempts in slots.values():
        attempts.sort(key=lambda r: r.start_time)
        done = [i for i, r in enumerate(attempts) if r.status == "FINISHED"]
        last_done = done[-1] if done else -1
        if last_done >= 0:
            finished.append(attempts[last_done])
        newer_failures = attempts[last_done + 1:]
        unfinished.extend(newer_failures)
        superseded += len(attempts) - len(newer_failures) - (1 if last_done >= 0 else 0)
    unfinished.sort(key=lambda r: (r.task, r.model, r.seed if r.seed is not None else -1, r.start_time))
    return finished, unfinished, superseded


def read_predictions(run: RunRecord, client) -> dict | None:
    """``{example id: record}`` from the run's predictions.jsonl, or None when absent.

    Local stores are read in place; other stores go through MLflow's artifact download."""
    parsed = urlparse(run.artifact_uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path)) / PREDICTIONS_FILE
        if not path.exists():
            return None
        text = path.read_text(encoding="utf-8")
    else:
        import tempfile

        try:
            with tempfile.TemporaryDirectory() as tmp:
                text = Path(client.download_artifacts(run.run_id, PREDICTIONS_FILE, tmp)).read_text(encoding="utf-8")
        except Exception:  # no predictions logged: significance is reported as unavailable
            return None
    out = {}
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            out[record.get("id", len(out))] = record
    return out


def _aggregate(model: str, runs: list[RunRecord]) -> ModelRow:
    names = {m for r in runs for m in r.metrics if m.startswith("test/")}
    stats = {m: s for m in sorted(names) if (s := Stat.of([r.metrics.get(m) for r in runs])) is not None}
    metrics = {m: s for m, s in stats.items() if not BUCKET_METRIC.match(m)}
    buckets = {m: s for m, s in stats.items() if BUCKET_METRIC.match(m)}
    perf = {k: s for k, m in PERF_COLUMNS.items() if (s := Stat.of([r.metrics.get(m) for r in runs])) is not None}
    return ModelRow(
        model=model, family=runs[0].family, attention=runs[0].attention, n=len(runs),
        seeds=sorted(r.seed for r in runs if r.seed is not None), metrics=metrics, perf=perf, buckets=buckets,
        run_ids=[r.run_id for r in runs],
    )


def _significance(task: TaskSummary, groups: dict[str, list[RunRecord]], client, with_tests: bool) -> None:
    baseline_row = next((r for r in task.rows if r.is_baseline), None)
    if baseline_row is None:
        for row in task.rows:
            row.significance_note = "no rnn baseline in this task"
        return
    others = [row for row in task.rows if row is not baseline_row]
    if not with_tests:
        for row in others:
            row.significance_note = "not computed (--no-significance)"
        return
    metric = task.primary_metric
    scorer = significance.example_scorer(task.kind, metric)
    is_corpus_bleu = task.kind == "seq2seq" and metric in ("bleu", "chrf")
    if scorer is None and not is_corpus_bleu:
        for row in others:
            row.significance_note = f"no per-example score for {task.kind}/{metric}"
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
    if is_corpus_bleu:
        p_values = significance.sacrebleu_paired_bs(samples, metric) if samples else {}
    else:
        p_values = {name: significance.paired_bootstrap(s, scorer) for name, s in samples.items()}
    for row in others:
        if row.model in p_values:
            row.p_value = p_values[row.model]
            row.significant = row.p_value < significance.ALPHA
            row.significance_note = f"{len(samples[row.model].keys)} paired examples"


def summarize(records: list[RunRecord], *, experiment: str, parent_run_id: str | None = None,
              client=None, with_significance: bool = True) -> Comparison:
    """Aggregate child runs into a :class:`Comparison` (see the module docstring)."""
    finished, unfinished, superseded = select_attempts(records)
    by_task: dict[str, dict[str, list[RunRecord]]] = {}
    for r in finished:
        by_task.setdefault(r.task, {}).setdefault(r.model, []).append(r)
    tasks = []
    for task_name in sorted(by_task):
        groups = by_task[task_name]
        first = next(iter(groups.values()))[0]
        primary, better = first.primary_metric, first.greater_is_better
        rows = [_aggregate(model, runs) for model, runs in groups.items()]
        key = f"test/{primary}"

        def quality(row, _key=key, _better=better):
            stat = row.metrics.get(_key)
            if stat is None:
                return -math.inf
            return stat.mean if _better else -stat.mean

        rnn_rows = [row for row in rows if row.family == "rnn"]
        baseline = max(rnn_rows, key=quality) if rnn_rows else None
        if baseline is not None:
            baseline.is_baseline = True
            base_stat = baseline.metrics.get(key)
            for row in rows:
                stat = row.metrics.get(key)
                if row is not baseline and stat is not None and base_stat is not None:
                    row.delta = stat.mean - base_stat.mean
        rows.sort(key=lambda row: (not row.is_baseline, -quality(row), row.model))
        method = ("sacrebleu paired bootstrap (PairedTest, bs)" if first.kind == "seq2seq"
                  else "paired bootstrap over per-example scores")
        summary = TaskSummary(task_name, first.kind, primary, better,
                              baseline.model if baseline else None, method, rows)
        _significance(summary, groups, client, with_significance)
        tasks.append(summary)
    return Comparison(experiment, parent_run_id, tasks, unfinished, superseded, records)


def compare_experiment(client, experiment_name: str, parent_run_id: str | None = None,
                       with_significance: bool = True) -> Comparison:
    """Fetch and summarise one experiment (optionally one parent run of it)."""
    exp = find_experiment(client, experiment_name)
    records = fetch_child_runs(client, exp.experiment_id, parent_run_id)
    return summarize(records, experiment=experiment_name, parent_run_id=parent_run_id,
                     client=client, with_significance=with_significance)



def summarize_grid_to_parent(client, experiment_id: str, parent_run_id: str,
                             with_significance: bool = True) -> Comparison:
    """Summarise the grid's experiment and log the table and plots on ``parent_run_id``.

    The runner calls this at the end of ``attnbench run``. The whole experiment is
    summarised, not only this invocation's children: a re-run skips pairings that already
    finished, and the parent should still show the full grid (slots are deduplicated, see
    :func:`select_attempts`). Files go to the parent's ``summary/`` artifact folder."""
    from .compare_report import fetch_bench_series, log_report  # plotting stays out of plain reads

    experiment = client.get_experiment(experiment_id).name
    records = fetch_child_runs(client, experiment_id)
    comparison = summarize(records, experiment=experiment, parent_run_id=parent_run_id,
                           client=client, with_significance=with_significance)
    log_report(client, parent_run_id, comparison, fetch_bench_series(client))
    return comparison
