"""Pictures of runs and grids (matplotlib, PNG).

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so they
work headless and in threads. Every function returns a Figure; :func:`save_png` writes one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, NullFormatter

from .compare import BUCKET_METRIC, Comparison

DPI = 90
MAX_PANEL_INCHES = 3.5  # a 6-layer x 4-head grid stays a readable, quick-to-save PNG
MAX_LABELLED_TOKENS = 80  # beyond this, tick labels overlap into a black bar
PICTURES_DIR = "pictures"
N_ATTENTION_EXAMPLES = 2


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _as_layer_maps(maps) -> list[tuple[str, np.ndarray]]:
    """Normalise to [(layer name, (heads, q_len, k_len) array)] for the first example."""
    if hasattr(maps, "shape"):  # one array: (layers, heads, q, k)
        arr = np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps, dtype=np.float32)
        if arr.ndim != 4:
            raise ValueError(f"attention maps array must be (layers, heads, q_len, k_len), got shape {arr.shape}")
        return [(f"layer {i}", arr[i]) for i in range(arr.shape[0])]
    out = []
    for i, item in enumerate(maps):
        name, weights = item if isinstance(item, tuple) else (f"layer {i}", item)
        arr = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=np.float32)
        if arr.ndim == 4:  # (batch, heads, q, k) as capture_attention_maps records: first example
            arr = arr[0]
        if arr.ndim != 3:
            raise ValueError(f"attention map {name!r} must be (heads, q_len, k_len) or (batch, heads, q_len, k_len), got {arr.shape}")
        out.append((name, arr))
    return out


def attention_map_figure(maps, tokens, *, title: str | None = None) -> Figure:
    """A layer x head grid of attention maps with the tokens on the axes.

    ``maps``: what :func:`attnbench.capture_attention_maps` records (``[(module name,
    (batch, heads, q, k))]``, first example drawn), a list of ``(heads, q, k)`` arrays, or
    one ``(layers, heads, q, k)`` array. ``tokens``: the tokens of a self-attention example,
    or ``(query_tokens, key_tokens)`` for cross-attention; an axis is labelled only when its
    length matches the map's.
    """
    layers = _as_layer_maps(maps)
    if not layers:
        raise ValueError("no attention maps to draw (the variant may not return weights)")
    if isinstance(tokens, tuple) and len(tokens) == 2 and not isinstance(tokens[0], str):
        q_tokens, k_tokens = list(tokens[0]), list(tokens[1])
    else:
        q_tokens = k_tokens = list(tokens)
    n_heads = max(a.shape[0] for _, a in layers)
    size = min(2.2 + 0.12 * max(len(k_tokens), 8), MAX_PANEL_INCHES)
    label_axes = max(len(q_tokens), len(k_tokens)) <= MAX_LABELLED_TOKENS
    fig = Figure(figsize=(size * n_heads, size * len(layers)), layout="constrained")
    axes = fig.subplots(len(layers), n_heads, squeeze=False)
    for row, (name, arr) in enumerate(layers):
        for head in range(n_heads):
            ax = axes[row][head]
            if head >= arr.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(arr[head], cmap="viridis", vmin=0.0, vmax=max(float(arr[head].max()), 1e-6), aspect="auto")
            ax.set_title(f"{name} · head {head}", fontsize=8)
            q_len, k_len = arr.shape[1], arr.shape[2]
            # every head of a row shares its axes: label the row's first panel only (the
            # text objects, not the images, are what makes these figures slow to save)
            if head > 0:
                ax.set_xticks([])
                ax.set_yticks([])
            elif label_axes:
                if len(k_tokens) == k_len:
                    ax.set_xticks(range(k_len), k_tokens, rotation=90, fontsize=6)
                if len(q_tokens) == q_len:
                    ax.set_yticks(range(q_len), q_tokens, fontsize=6)
    if title:
        fig.suptitle(title)
    return fig


def _points(series) -> tuple[list[float], list[float]]:
    """(steps, values) from [(step, value)] pairs or MLflow ``Metric`` objects."""
    pairs = [(m.step, m.value) if hasattr(m, "step") else (m[0], m[1]) for m in series]
    pairs.sort(key=lambda p: p[0])
    return [p[0] for p in pairs], [p[1] for p in pairs]


def training_curves_figure(history: Mapping[str, Sequence], *, title: str | None = None) -> Figure:
    """Training loss per step (left) and validation metrics per epoch (right).

    ``history``: metric name -> ``[(step, value), ...]`` or MLflow ``Metric`` objects (what
    ``MlflowClient.get_metric_history`` returns), e.g. ``train/loss``, ``val/accuracy``.
    """
    train = {k: v for k, v in history.items() if k.startswith("train/") and len(v)}
    val = {k: v for k, v in history.items() if k.startswith("val/") and len(v)}
    if not train and not val:
        raise ValueError(f"no train/* or val/* series in history (got {sorted(history)})")
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_train, ax_val = fig.subplots(1, 2)
    for name, series in sorted(train.items()):
        ax_train.plot(*_points(series), label=name, linewidth=1)
    ax_train.set_xlabel("step")
    ax_train.set_title("training")
    for name, series in sorted(val.items()):
        ax_val.plot(*_points(series), marker="o", label=name)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation")
    for ax in (ax_train, ax_val):
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


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


def quality_vs_speed_figure(comparison: Comparison) -> Figure | None:
    """Per task: primary test metric against training tokens/s, one point per model.

    Error bars are the std over seeds; the Pareto front (faster and better than every
    point it hides) is joined and ringed, as in the Long Range Arena efficiency figure.
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
    fig, axes = _grid_axes(len(panels))
    for ax, (task, pts) in zip(axes, panels):
        speed = [p[1].mean for p in pts]
        quality = [p[2].mean for p in pts]
        for (row, sp, q) in pts:
            marker = "s" if row.family == "rnn" else "o"
            ax.errorbar(sp.mean, q.mean, yerr=q.std or 0.0, xerr=sp.std or 0.0, fmt=marker, capsize=3)
            ax.annotate(row.model, (sp.mean, q.mean), textcoords="offset points", xytext=(5, 4), fontsize=7)
        front = pareto_front(speed, quality, task.greater_is_better)
        ax.plot([speed[i] for i in front], [quality[i] for i in front], "--", color="grey", linewidth=1,
                label="Pareto front")
        ax.scatter([speed[i] for i in front], [quality[i] for i in front], s=160, facecolors="none",
                   edgecolors="red", linewidths=1.2)
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
        ax.legend(fontsize=7)
    return fig


def _bucket_order(name: str) -> tuple[int, float]:
    m = BUCKET_METRIC.match(name)
    hi = math.inf if m["hi"] == "inf" else int(m["hi"])
    return int(m["lo"]), hi


def _bucket_label(name: str) -> str:
    m = BUCKET_METRIC.match(name)
    return f"{m['lo']}+" if m["hi"] == "inf" else f"{m['lo']}–{m['hi']}"


def bleu_by_length_figure(comparison: Comparison, metric: str = "bleu") -> Figure | None:
    """Per task: a metric by length bucket (BLEU by source length, accuracy by sequence length),
    one line per model (mean ± std).

    In the style of Bahdanau et al. (2015), Fig. 2. None when no run logged buckets."""
    panels = []
    for task in comparison.tasks:
        names = sorted({b for row in task.rows for b in row.buckets if BUCKET_METRIC.match(b)["metric"] == metric},
                       key=_bucket_order)
        if names:
            panels.append((task, names))
    if not panels:
        return None
    fig, axes = _grid_axes(len(panels), width=6.0)
    for ax, (task, names) in zip(axes, panels):
        x = np.arange(len(names))
        for row in task.rows:
            stats = [row.buckets.get(n) for n in names]
            y = [s.mean if s else np.nan for s in stats]
            err = [(s.std or 0.0) if s else 0.0 for s in stats]
            style = "--" if row.family == "rnn" else "-"
            ax.errorbar(x, y, yerr=err, fmt=style, marker="o", capsize=3, label=row.model)
        ax.set_xticks(x, [_bucket_label(n) for n in names])
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
            xs, ys = _points(points)
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


def attention_pictures(task, model) -> list[Figure]:
    """Attention maps of the task's fixed examples, or [] for variants that return no weights.

    The forward pass is ``task.loss`` in eval mode: it feeds every input the model kind needs
    (encoder, decoder and cross-attention included) without knowing the batch layout."""
    import torch

    from .attention import capture_attention_maps

    figures = []
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for i, (tokens, batch) in enumerate(task.attention_examples(N_ATTENTION_EXAMPLES)):
            with torch.no_grad(), capture_attention_maps(model) as maps:
                task.loss(model, batch.to(device))
            if maps:
                figures.append(attention_map_figure(maps, tokens, title=f"example {i}"))
    finally:
        model.train(was_training)
    return figures


def log_run_pictures(client, run_id: str, task, model, result) -> list[str]:
    """Log one run's pictures under ``pictures/``: training curves (from ``result.history``)
    and attention maps of a few fixed examples. Returns the artifact paths."""
    import tempfile

    figures: dict[str, Figure] = {}
    history = getattr(result, "history", None) or {}
    if any(k.startswith(("train/", "val/")) for k in history):
        figures["training_curves.png"] = training_curves_figure(history)
    for i, fig in enumerate(attention_pictures(task, model)):
        figures[f"attention_example{i}.png"] = fig
    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in figures.items():
            save_png(fig, Path(tmp) / name)
        if figures:
            client.log_artifacts(run_id, tmp, artifact_path=PICTURES_DIR)
    return [f"{PICTURES_DIR}/{name}" for name in figures]
