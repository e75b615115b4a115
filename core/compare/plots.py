"""Pictures of a grid (matplotlib, PNG): quality vs speed, metric by length bucket, bench curves.

Built on :class:`~attnbench.compare.summary.Comparison`; saved with
:func:`attnbench.run.pictures.save_png`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, NullFormatter

from ..run.pictures import history_points
from .summary import Comparison, bucket_label, bucket_names


def pareto_front(speed: Sequence[float], quality: Sequence[float], greater_is_better: bool = True) -> list[int]:
    """Indices of points no other point beats in both speed (higher) and quality."""
    q = [v if greater_is_better else -v for v in quality]
    front = []
    for i in range(len(speed)):
        dominated = any(
            speed[j] >= speed[i] and q[j] >= q[i] and (speed[j] > speed[i] or q[j] > q[i])
            for j in range(len(speed)) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: speed[i])


def _grid_axes(n: int, width: float = 5.0, height: float = 4.0):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


MIN_Y_SPAN = 0.2  # the y axis spans at least this fraction of the largest value shown


def model_colours(comparison: Comparison) -> dict[str, tuple]:
    """One colour per model label, the same in every panel and every figure of a comparison."""
    from matplotlib import colormaps

    models = sorted({row.model for task in comparison.tasks for row in task.rows})
    palette = colormaps["tab10" if len(models) <= 10 else "tab20"]
    return {model: palette(i % palette.N) for i, model in enumerate(models)}


def honest_ylim(values: Sequence[float], errors: Sequence[float]) -> tuple[float, float]:
    """Limits covering the points and their error bars, widened to at least
    :data:`MIN_Y_SPAN` of the largest value, so a difference of noise size never fills the axis."""
    lo = min(v - e for v, e in zip(values, errors))
    hi = max(v + e for v, e in zip(values, errors))
    span = max(hi - lo, MIN_Y_SPAN * max(abs(v) for v in values), 1e-9)
    mid = (lo + hi) / 2
    pad = 0.08 * span
    return mid - span / 2 - pad, mid + span / 2 + pad


def quality_vs_speed_figure(comparison: Comparison) -> Figure | None:
    """Per task: primary test metric against training tokens/s, one point per model.

    Each model keeps one colour across panels, named in one legend under the panels (no
    labels on the points: they collide and run off the edge). Error bars are the std over
    seeds; the y range is never narrower than :data:`MIN_Y_SPAN` of the values, so
    differences within noise do not look large. The Pareto front (faster and better than
    every point it hides) is joined and ringed, as in the Long Range Arena efficiency figure.
    None when no task has both numbers.
    """
    panels = []
    for task in comparison.tasks:
        key = f"test/{task.primary_metric}"
        pts = [(row, row.perf["tokens_per_s"], row.metrics[key]) for row in task.rows
               if "tokens_per_s" in row.perf and key in row.metrics]
        if pts:
            panels.append((task, pts))
    if not panels:
        return None
    colours = model_colours(comparison)
    fig, axes = _grid_axes(len(panels))
    handles: dict[str, object] = {}
    for ax, (task, pts) in zip(axes, panels):
        speed = [p[1].mean for p in pts]
        quality = [p[2].mean for p in pts]
        for (row, sp, q) in pts:
            marker = "s" if row.is_baseline else "o"
            handles[row.model] = ax.errorbar(sp.mean, q.mean, yerr=q.std or 0.0, xerr=sp.std or 0.0, fmt=marker,
                                             capsize=3, color=colours[row.model],
                                             label=row.model + (" (baseline)" if row.is_baseline else ""))
        front = pareto_front(speed, quality, task.greater_is_better)
        handles["Pareto front"] = ax.plot([speed[i] for i in front], [quality[i] for i in front], "--", color="grey",
                                          linewidth=1, label="Pareto front")[0]
        ax.scatter([speed[i] for i in front], [quality[i] for i in front], s=160, facecolors="none",
                   edgecolors="red", linewidths=1.2)
        ax.set_ylim(*honest_ylim(quality, [p[2].std or 0.0 for p in pts]))
        # a log axis only pays off across a decade or more; within one it shows almost no
        # labelled ticks (and its minor labels overlap)
        if min(speed) > 0 and max(speed) / min(speed) >= 10:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel("training tokens / s")
        ax.set_ylabel(f"test {task.primary_metric}" + ("" if task.greater_is_better else " (lower is better)"))
        ax.set_title(task.task)
        ax.grid(alpha=0.3)
    fig.legend([handles[k] for k in handles], [h.get_label() for h in handles.values()], loc="outside lower center",
               ncols=min(len(handles), 4), fontsize=8)
    return fig


def bleu_by_length_figure(comparison: Comparison, metric: str = "bleu") -> Figure | None:
    """Per task: a metric by length bucket (BLEU by source length, accuracy by sequence length),
    one line per model (mean ± std).

    In the style of Bahdanau et al. (2015), Fig. 2. None when no run logged buckets."""
    panels = []
    for task in comparison.tasks:
        names = bucket_names(task, metric)
        if names:
            panels.append((task, names))
    if not panels:
        return None
    colours = model_colours(comparison)
    fig, axes = _grid_axes(len(panels), width=6.0)
    for ax, (task, names) in zip(axes, panels):
        x = np.arange(len(names))
        for row in task.rows:
            stats = [row.buckets.get(n) for n in names]
            y = [s.mean if s else np.nan for s in stats]
            err = [(s.std or 0.0) if s else 0.0 for s in stats]
            style = "--" if row.is_baseline else "-"
            ax.errorbar(x, y, yerr=err, fmt=style, marker="o", capsize=3, label=row.model, color=colours[row.model])
        ax.set_xticks(x, [bucket_label(n) for n in names])
        ax.set_xlabel("source sentence length (tokens)")
        ax.set_ylabel(f"test {metric.upper()}")
        ax.set_title(task.task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def efficiency_figure(series: Mapping[str, Mapping[str, Sequence]]) -> Figure | None:
    """Bench curves: one panel per metric, one line per run, value against sequence length.

    ``series``: metric name -> run label -> ``[(length, value), ...]`` (metrics that
    ``attnbench bench`` logs with ``step`` = sequence length). None when empty."""
    series = {m: runs for m, runs in series.items() if any(len(v) for v in runs.values())}
    if not series:
        return None
    fig, axes = _grid_axes(len(series))
    for ax, (metric, runs) in zip(axes, sorted(series.items())):
        positive = True
        for label, points in sorted(runs.items()):
            xs, ys = history_points(points)
            positive &= all(v > 0 for v in ys) and all(v > 0 for v in xs)
            ax.plot(xs, ys, marker="o", label=label)
        if positive:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_title(metric)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig
