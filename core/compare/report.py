"""Write a comparison's files (tables and grid-level plots) and attach them to the parent run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..run.pictures import save_png
from ..run.record import Tag
from . import plots, render
from .read import fetch_child_runs
from .summary import Comparison, summarize

BENCH_EXPERIMENT = "attnbench-bench"
SUMMARY_ARTIFACT_DIR = "summary"


def fetch_bench_series(client, experiment_name: str = BENCH_EXPERIMENT) -> dict[str, dict[str, list]]:
    """metric -> run label -> history, for metrics that ``attnbench bench`` stepped by length.

    One query for the runs, then one history read per stepped metric (bench experiments
    hold a handful of runs)."""
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return {}
    series: dict[str, dict[str, list]] = {}
    for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=1000):
        label = run.data.tags.get(Tag.ATTENTION) or run.info.run_name or run.info.run_id
        for metric in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, metric)
            if len({m.step for m in history}) > 1:
                series.setdefault(metric, {})[label] = history
    return series


def grid_figures(comparison: Comparison, bench_series: dict | None = None) -> dict[str, object]:
    """File name -> Figure for every grid-level picture that has data."""
    figures = {
        "quality_vs_speed.png": plots.quality_vs_speed_figure(comparison),
        "bleu_by_length.png": plots.bleu_by_length_figure(comparison),
        # probes such as reverse log accuracy per length bucket (acc_len_<lo>_<hi>)
        "accuracy_by_length.png": plots.bleu_by_length_figure(comparison, metric="acc"),
        "efficiency.png": plots.efficiency_figure(bench_series or {}),
    }
    return {name: fig for name, fig in figures.items() if fig is not None}


def write_report(comparison: Comparison, out_dir: str | Path, bench_series: dict | None = None) -> list[Path]:
    """Write comparison.{md,csv,json,txt}, unfinished.csv and the grid plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "comparison.md": render.to_markdown(comparison),
        "comparison.csv": render.to_csv(comparison),
        "comparison.json": render.to_json(comparison),
        "comparison.txt": render.render(comparison, "table"),
        "unfinished.csv": render.unfinished_csv(comparison),
    }
    written = []
    for name, text in texts.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for name, fig in grid_figures(comparison, bench_series).items():
        written.append(save_png(fig, out / name))
    return written


def log_report(client, parent_run_id: str, comparison: Comparison, bench_series: dict | None = None) -> None:
    """Attach the report to the parent run under ``summary/`` so the MLflow UI shows it."""
    with tempfile.TemporaryDirectory() as tmp:
        write_report(comparison, tmp, bench_series)
        client.log_artifacts(parent_run_id, tmp, artifact_path=SUMMARY_ARTIFACT_DIR)


def summarize_grid_to_parent(client, experiment_id: str, parent_run_id: str,
                             with_significance: bool = True, host=None) -> Comparison:
    """Summarise the grid's experiment and log the table and plots on ``parent_run_id``.

    The runner calls this at the end of ``attnbench run``. The whole experiment is
    summarised, not only this invocation's children: a re-run skips pairings that already
    finished, and the parent should still show the full grid (slots are deduplicated, see
    :func:`select_attempts`). Files go to the parent's ``summary/`` artifact folder. ``host``:
    the plugins the grid ran with (their tasks declare the significance tests)."""
    experiment = client.get_experiment(experiment_id).name
    records = fetch_child_runs(client, experiment_id)
    comparison = summarize(records, experiment=experiment, parent_run_id=parent_run_id,
                           client=client, with_significance=with_significance, host=host)
    log_report(client, parent_run_id, comparison, fetch_bench_series(client))
    return comparison
