"""Pictures of one run (matplotlib, PNG): training curves, attention maps, head statistics.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so they
work headless and in threads. Every function returns a Figure; :func:`save_png` writes one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .record import HEAD_STATS_PICTURE, HEADS_TABLE, PICTURES_DIR, Tag, is_trivial_metric

DPI = 90
MAX_PANEL_INCHES = 3.5  # a 6-layer x 4-head grid stays a readable, quick-to-save PNG
MAX_LABELLED_TOKENS = 80  # beyond this, tick labels overlap into a black bar
N_ATTENTION_EXAMPLES = 2


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a constrained layout already fits the figure; "tight" would draw it a second time to crop
    # (measured: a third of the save time of an attention-map grid)
    tight = None if fig.get_layout_engine() is not None else "tight"
    fig.savefig(path, format="png", dpi=DPI, bbox_inches=tight)
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
    ``(query_tokens, key_tokens)`` for cross-attention, or an :class:`~attnbench.tasks.ExampleTokens`
    (source and decoder tokens), whose axes follow each map's role as recorded by
    ``capture_attention_maps`` (encoder self-attention: source x source; decoder self-attention:
    target x target; cross-attention: target x source). An axis is labelled only when its
    length matches the map's.
    """
    layers = _as_layer_maps(maps)
    if not layers:
        raise ValueError("no attention maps to draw (the variant may not return weights)")
    axis_tokens = _axis_tokens(tokens, getattr(maps, "roles", None), len(layers))
    n_heads = max(a.shape[0] for _, a in layers)
    longest = max(max(len(q), len(k)) for q, k in axis_tokens)
    size = min(2.2 + 0.12 * max(max(len(k) for _, k in axis_tokens), 8), MAX_PANEL_INCHES)
    label_axes = longest <= MAX_LABELLED_TOKENS
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
            q_tokens, k_tokens = axis_tokens[row]
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


def _axis_tokens(tokens, roles, n_layers: int) -> list[tuple[list[str], list[str]]]:
    """(query tokens, key tokens) for each drawn map."""
    from ..tasks import ExampleTokens

    if isinstance(tokens, ExampleTokens):
        source, target = list(tokens.source), list(tokens.target)
        by_role = {"self": (source, source), "causal": (target, target), "cross": (target, source)}
        # maps handed over without roles (a plain list): label what matches the source's length
        return [by_role[role] for role in roles] if roles and len(roles) == n_layers else [(source, source)] * n_layers
    if isinstance(tokens, tuple) and len(tokens) == 2 and not isinstance(tokens[0], str):
        return [(list(tokens[0]), list(tokens[1]))] * n_layers
    return [(list(tokens), list(tokens))] * n_layers


def history_points(series) -> tuple[list[float], list[float]]:
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
    # trivial baselines (scores of the data alone) are flat lines, not learning curves
    val = {k: v for k, v in history.items() if k.startswith("val/") and len(v) and not is_trivial_metric(k)}
    if not train and not val:
        raise ValueError(f"no train/* or val/* series in history (got {sorted(history)})")
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_train, ax_val = fig.subplots(1, 2)
    for name, series in sorted(train.items()):
        ax_train.plot(*history_points(series), label=name, linewidth=1)
    ax_train.set_xlabel("step")
    ax_train.set_title("training")
    for name, series in sorted(val.items()):
        ax_val.plot(*history_points(series), marker="o", label=name)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation")
    for ax in (ax_train, ax_val):
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def attention_pictures(task, model) -> list[Figure]:
    """Attention maps of the task's fixed examples, or [] for variants that return no weights."""
    from .head_stats import collect

    _, drawn = collect(task, model, n_examples=0, keep_maps=N_ATTENTION_EXAMPLES)
    return [attention_map_figure(maps, tokens, title=f"example {i}") for i, (tokens, maps) in enumerate(drawn)]


def log_run_pictures(client, run_id: str, task, model, result) -> list[str]:
    """Log one run's pictures under ``pictures/``: training curves (from ``result.history``),
    attention maps of a few fixed examples, and the head statistics (metrics ``heads/*``,
    ``heads.csv`` and their heatmap) from the same forward passes. Returns the picture paths."""
    import tempfile
    import time

    from mlflow.entities import Metric, RunTag

    from . import head_stats

    figures: dict[str, Figure] = {}
    history = getattr(result, "history", None) or {}
    if any(k.startswith(("train/", "val/")) for k in history):
        figures["training_curves.png"] = training_curves_figure(history)
    stats, drawn = head_stats.collect(task, model, keep_maps=N_ATTENTION_EXAMPLES)
    for i, (tokens, maps) in enumerate(drawn):
        figures[f"attention_example{i}.png"] = attention_map_figure(maps, tokens, title=f"example {i}")
    if stats:
        figures[HEAD_STATS_PICTURE] = head_stats.head_stats_figure(stats, title=f"heads on {head_stats.N_EXAMPLES} fixed examples")
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in head_stats.as_metrics(stats).items()])
        client.log_text(run_id, head_stats.as_csv(stats), HEADS_TABLE)
    elif task.attention_examples(1):  # the task has examples, so the model recorded no maps
        client.log_batch(run_id, tags=[RunTag(Tag.HEAD_STATS, head_stats.skipped_note(model))])
    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in figures.items():
            save_png(fig, Path(tmp) / name)
        if figures:
            client.log_artifacts(run_id, tmp, artifact_path=PICTURES_DIR)
    return [f"{PICTURES_DIR}/{name}" for name in figures]
