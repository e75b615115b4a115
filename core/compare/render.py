"""Render a :class:`~attnbench.compare.summary.Comparison` as a rich table, markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

from ..errors import BadInputError
from ..significance import ALPHA
from ..run.record import TEST, trivial_metric
from .stats import Stat
from .summary import BUCKET_METRIC, Comparison, ModelRow, TaskSummary, bucket_label, bucket_names

FORMATS = ("table", "markdown", "csv", "json")
PERF_HEADERS = {"params": "params", "tokens_per_s": "train tok/s", "wall_s": "wall s"}
WIDE_CONSOLE = 200  # when output is piped, rich would otherwise wrap at 80 columns


def decimals(x: float) -> int:
    """Digits after the point that suit a value's size (BLEU 27.35, accuracy 0.8523)."""
    return 2 if abs(x) >= 1 else 4


def column_decimals(task: TaskSummary, metric: str) -> int:
    """One precision per column, from its largest value, so a column never mixes 1.00 and 0.9700."""
    means = [abs(r.metrics[metric].mean) for r in task.rows if metric in r.metrics]
    return decimals(max(means, default=0.0))


def stat_cell(stat: Stat | None, row_n: int | None = None, digits: int | None = None) -> str:
    """``mean ± std``, std in the mean's precision; ``(n=k)`` only when k differs from the row's n."""
    if stat is None:
        return "—"
    d = decimals(stat.mean) if digits is None else digits
    spread = f" ± {stat.std:.{d}f}" if stat.std is not None else ""
    count = "" if stat.n == row_n else f" (n={stat.n})"
    return f"{stat.mean:.{d}f}{spread}{count}"


def perf_cell(name: str, stat: Stat | None) -> str:
    if stat is None:
        return "—"
    return f"{stat.mean:.1f}" if name == "wall_s" else f"{stat.mean:,.0f}"


def delta_cell(row: ModelRow, primary: str, digits: int | None = None) -> str:
    if row.is_baseline:
        return "baseline"
    if row.delta is None:
        return "—"
    stat = row.metrics.get(primary)
    d = digits if digits is not None else decimals(stat.mean) if stat else 4
    return f"{row.delta:+.{d}f}"


def p_cell(row: ModelRow) -> str:
    if row.is_baseline:
        return ""
    if row.p_value is None:
        return "n/a"
    return f"{row.p_value:.3f}" + (" *" if row.significant else "")


def task_title(task: TaskSummary) -> str:
    arrow = "higher is better" if task.greater_is_better else "lower is better"
    base = task.baseline or "none"
    return f"{task.task} ({task.kind}; primary {task.primary_metric}, {arrow}; baseline {base})"


def task_header(task: TaskSummary, compact: bool = False) -> list[str]:
    """Column names; ``compact`` drops family and attention (the model label carries them)."""
    base = task.baseline or "baseline"
    if compact:  # the title says these are test metrics and names the baseline
        return (["model", "n"] + [m.removeprefix("test/") for m in task.metric_names(headline=True)]
                + list(PERF_HEADERS.values()) + ["Δ", "p"])
    return (["model", "family", "attention", "n"] + task.metric_names() + list(PERF_HEADERS.values())
            + [f"Δ {task.primary_metric} vs {base}", "p"])


def task_cells(task: TaskSummary, row: ModelRow, compact: bool = False) -> list[str]:
    primary = f"test/{task.primary_metric}"
    ids = [row.model, str(row.n)] if compact else [row.model, row.family, row.attention, str(row.n)]
    return (ids
            + [stat_cell(row.metrics.get(m), row.n, column_decimals(task, m)) for m in task.metric_names(headline=compact)]
            + [params_cell(task, row) if k == "params" else perf_cell(k, row.perf.get(k)) for k in PERF_HEADERS]
            + [delta_cell(row, primary, column_decimals(task, primary)), p_cell(row)])


def trivial_rows(task: TaskSummary, compact: bool = False) -> list[list[str]]:
    """One row per trivial baseline under the models: its scores in the model metrics' columns
    (std only where runs disagree, i.e. saw different data), nothing in the other columns."""
    metrics = task.metric_names(headline=compact)
    rows = []
    for name, stats in task.trivial_baselines.items():
        cells = [stat_cell(replace(s, std=s.std or None), s.n, column_decimals(task, m)) if (s := stats.get(m)) else ""
                 for m in metrics]
        ids = [f"trivial: {name}", ""] if compact else [f"trivial: {name}", "", "", ""]
        rows.append(ids + cells + [""] * len(PERF_HEADERS) + ["", ""])
    return rows


def params_cell(task: TaskSummary, row: ModelRow) -> str:
    """Parameter count, with its ratio to the baseline's: comparisons are fair only between
    models of similar size, and this keeps the size gap in view."""
    cell = perf_cell("params", row.perf.get("params"))
    base = next((r for r in task.rows if r.is_baseline), None)
    if row.is_baseline or base is None or "params" not in row.perf or "params" not in base.perf or not base.perf["params"].mean:
        return cell
    return f"{cell} ({row.perf['params'].mean / base.perf['params'].mean:.2f}×)"


def missing_p_notes(task: TaskSummary) -> list[str]:
    """Why some rows of a task have no p-value (one line per distinct reason)."""
    notes = {}
    for row in task.rows:
        if not row.is_baseline and row.p_value is None and row.significance_note:
            notes.setdefault(row.significance_note, []).append(row.model)
    return [f"p n/a for {', '.join(models)}: {note}" for note, models in notes.items()]


def footnote(comparison: Comparison) -> str:
    methods = sorted({t.significance_method for t in comparison.tasks} - {""})
    against = (f"{comparison.reference} (chosen with --baseline)" if comparison.reference
               else "the task's no-attention baseline")
    text = (f"mean ± sample std over the n seeds; * p < {ALPHA} against {against} "
            f"({'; '.join(methods) or 'no tests'}; units paired by seed and example id).")
    if any(t.trivial_baselines for t in comparison.tasks):
        text += (" Rows 'trivial: <name>' are baselines the task computed from the data alone (no model; "
                 "the task's docs say how), neither ranked nor tested.")
    if comparison.superseded:
        text += f" {comparison.superseded} earlier attempt(s) superseded by a re-run were left out."
    return text + environment_note(comparison)


def environment_note(comparison: Comparison) -> str:
    """What computed the runs; a warning when the tables mix torch builds or processors."""
    known = comparison.known_environments
    unknown = comparison.environments.get("", 0)
    untagged = f" ({unknown} run(s) logged before attnbench recorded it)" if unknown else ""
    if len(known) == 1:
        return f" Computed with {next(iter(known))}{untagged}."
    if not known:
        return ""
    listed = "; ".join(f"{env} ({n} runs)" for env, n in sorted(known.items()))
    return (f" Runs from {len(known)} environments{untagged}: {listed}. Digits repeat only on the same torch "
            f"build and processor kind; compare across them as across seeds.")


def unfinished_rows(comparison: Comparison) -> list[list[str]]:
    return [[r.task, r.model, "" if r.seed is None else str(r.seed), r.status, r.run_id, _short(r.error)]
            for r in comparison.unfinished]


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


UNFINISHED_HEADER = ["task", "model", "seed", "status", "run id", "error"]


def length_tables(task: TaskSummary) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per bucketed metric (e.g. BLEU by source length): a header and one row per model."""
    out = []
    for metric in sorted({BUCKET_METRIC.match(b)["metric"] for row in task.rows for b in row.buckets}):
        names = bucket_names(task, metric)
        header = ["model"] + [bucket_label(n) for n in names]
        # one precision per metric: accuracy buckets (0.83) and BLEU buckets (27.5) never share one
        digits = decimals(max((abs(row.buckets[n].mean) for row in task.rows for n in names if n in row.buckets),
                              default=0.0))
        out.append((metric, header, [[row.model] + [stat_cell(row.buckets.get(n), row.n, digits) for n in names]
                                     for row in task.rows]))
    return out


def to_markdown(comparison: Comparison) -> str:
    """GitHub-flavoured markdown: one table per task, then the unfinished runs."""
    def table(header, rows):
        esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)

    parts = [f"# Comparison: {comparison.experiment}"]
    if comparison.parent_run_id:
        parts.append(f"Parent run `{comparison.parent_run_id}`.")
    for task in comparison.tasks:
        parts.append(f"## {task_title(task)}")
        parts.append(table(task_header(task), [task_cells(task, row) for row in task.rows] + trivial_rows(task)))
        parts.extend(missing_p_notes(task))
        for metric, header, rows in length_tables(task):
            parts.append(f"By length: test {metric} per bucket (mean ± std over seeds):")
            parts.append(table(header, rows))
    if not comparison.tasks:
        parts.append("No finished runs.")
    parts.append(footnote(comparison))
    parts.extend(matrix.to_markdown() for matrix in comparison.matrices)
    parts.append("## Failed, killed or unfinished runs (not averaged)")
    parts.append(table(UNFINISHED_HEADER, unfinished_rows(comparison)) if comparison.unfinished else "None.")
    return "\n\n".join(parts) + "\n"


def to_csv(comparison: Comparison) -> str:
    """One row per (task, model); metric columns are the union over tasks (empty where absent).
    A task's trivial baselines are columns ``test/trivial_<name>_<metric>_mean`` / ``_std`` of
    each of its rows (the same values in every row).

    Grids with ``evaluate_with`` add their matrices' cells as metric columns of the row of
    the model trained that way: ``test_<evaluation>/<metric>_mean`` / ``_std``."""
    matrix_cells = {(m.task, row, m.metric_key(column)): stat for m in comparison.matrices
                    for (row, column), stat in m.cells.items() if column != m.columns[0]}
    trivial_cells = {(t.task, TEST + trivial_metric(name, metric.removeprefix(TEST))): stat
                     for t in comparison.tasks for name, stats in t.trivial_baselines.items()
                     for metric, stat in stats.items()}
    metric_names = sorted({m for t in comparison.tasks for m in t.metric_names()}
                          | {key for _, _, key in matrix_cells} | {key for _, key in trivial_cells})
    header = ["task", "kind", "model", "family", "attention", "is_baseline", "n", "seeds",
              "primary_metric", "greater_is_better"]
    for m in metric_names:
        header += [f"{m}_mean", f"{m}_std"]
    header += [f"{k}_mean" for k in PERF_HEADERS] + ["baseline", "delta", "p_value", "significant"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for task in comparison.tasks:
        for row in task.rows:
            cells = [task.task, task.kind, row.model, row.family, row.attention, row.is_baseline, row.n,
                     " ".join(map(str, row.seeds)), task.primary_metric, task.greater_is_better]
            for m in metric_names:
                s = (row.metrics.get(m) or matrix_cells.get((task.task, row.model, m))
                     or trivial_cells.get((task.task, m)))
                cells += [s.mean if s else "", s.std if s and s.std is not None else ""]
            cells += [row.perf[k].mean if k in row.perf else "" for k in PERF_HEADERS]
            cells += [task.baseline or "", "" if row.delta is None else row.delta,
                      "" if row.p_value is None else row.p_value,
                      "" if row.significant is None else row.significant]
            writer.writerow(cells)
    return buf.getvalue()


def unfinished_csv(comparison: Comparison) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(UNFINISHED_HEADER)
    writer.writerows(unfinished_rows(comparison))
    return buf.getvalue()


def to_json(comparison: Comparison) -> str:
    return json.dumps(comparison.to_dict(), indent=2, sort_keys=False)


def print_table(comparison: Comparison, console=None) -> None:
    """Rich tables on the terminal: one per task, then the unfinished runs."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=WIDE_CONSOLE)
    for task in comparison.tasks:
        table = Table(title=task_title(task), title_justify="left")
        for i, h in enumerate(task_header(task, compact=True)):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in task.rows:
            style = "bold" if row.is_baseline else ("green" if row.significant else None)
            table.add_row(*task_cells(task, row, compact=True), style=style)
        for cells in trivial_rows(task, compact=True):
            table.add_row(*cells, style="dim")
        console.print(table)
        for note in missing_p_notes(task):
            console.print(note, style="dim")
    if not comparison.tasks:
        console.print("No finished runs.")
    console.print(footnote(comparison), style="dim")
    for matrix in comparison.matrices:
        console.print(matrix.to_table())
    if comparison.unfinished:
        table = Table(title="Failed, killed or unfinished runs (not averaged)", title_justify="left")
        for h in UNFINISHED_HEADER:
            table.add_column(h)
        for cells in unfinished_rows(comparison):
            table.add_row(*cells, style="red")
        console.print(table)


def render(comparison: Comparison, fmt: str) -> str:
    """The comparison as text in ``fmt`` (``table`` renders through rich into plain text)."""
    if fmt == "markdown":
        return to_markdown(comparison)
    if fmt == "csv":
        return to_csv(comparison)
    if fmt == "json":
        return to_json(comparison)
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=WIDE_CONSOLE, record=True)
        print_table(comparison, console)
        return console.export_text()
    raise BadInputError(f"--format: {fmt!r} is not a format; valid: {', '.join(FORMATS)}")
