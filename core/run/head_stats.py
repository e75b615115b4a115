"""Which heads look where, in numbers: three statistics per attention module and head.

On a fixed sample of the task's inputs (``Task.attention_examples``, one example per forward
pass, so no padding enters a map), every attention map a forward pass records
(:func:`attnbench.capture_attention_maps`) is reduced to, per head and averaged over every
query row of every example:

- ``distance``: attention-weighted ``|query position - key position|``, in tokens (0: each
  token looks at itself; for cross-attention, target position against source position);
- ``entropy``: entropy of the row in nats (0: all weight on one key; ``log(k)`` : uniform
  over ``k`` keys);
- ``first_token``: weight on key position 0 ([CLS] in qa, BOS in a decoder's input, the first
  word elsewhere), the "attention sink" many heads fall back to.

Variants whose ``returns_weights`` is False record no maps; their heads are skipped and the
run says so in a tag.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

import torch

from . import record

N_EXAMPLES = 16  # enough query rows for stable means; one forward pass each on a tiny model


@dataclass
class HeadStats:
    layer: int  # index of the attention module in call order (rows of the heatmap)
    module: str  # its name in the model, e.g. encoder.blocks.0.self_attn
    head: int
    distance: float
    entropy: float
    first_token: float
    queries: int  # query rows averaged over


def row_statistics(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head sums over query rows of ``weights`` (batch, heads, q_len, k_len).

    Returns ``{stat: (heads,) sums}`` and ``rows``: the number of rows summed, so that maps
    of different lengths pool into one mean per head."""
    w = weights.detach().float()
    if w.ndim != 4:
        raise ValueError(f"attention weights must be (batch, heads, q_len, k_len), got shape {tuple(w.shape)}")
    batch, heads, q_len, k_len = w.shape
    q_pos = torch.arange(q_len, dtype=torch.float32).unsqueeze(1)
    k_pos = torch.arange(k_len, dtype=torch.float32).unsqueeze(0)
    distance = (w * (q_pos - k_pos).abs()).sum(-1)  # (batch, heads, q_len)
    entropy = -torch.special.xlogy(w, w).sum(-1)  # 0 * log 0 counts as 0
    first = w[..., 0]
    return {
        "distance": distance.sum((0, 2)), "entropy": entropy.sum((0, 2)), "first_token": first.sum((0, 2)),
        "rows": torch.full((heads,), float(batch * q_len)),
    }


class HeadStatsAccumulator:
    """Pools :func:`row_statistics` over many maps, keyed by attention module name."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = {}  # insertion order = call order

    def add(self, module: str, weights: torch.Tensor) -> None:
        stats = row_statistics(weights)
        if module not in self.sums:
            self.sums[module] = stats
            return
        known = self.sums[module]
        if known["rows"].shape != stats["rows"].shape:
            raise ValueError(f"{module}: {stats['rows'].shape[0]} heads now, {known['rows'].shape[0]} before")
        for key, value in stats.items():
            known[key] = known[key] + value

    def result(self) -> list[HeadStats]:
        out = []
        for layer, (module, sums) in enumerate(self.sums.items()):
            rows = sums["rows"]
            for head in range(rows.shape[0]):
                n = float(rows[head])
                out.append(HeadStats(layer, module, head, float(sums["distance"][head]) / n,
                                     float(sums["entropy"][head]) / n, float(sums["first_token"][head]) / n, int(n)))
        return out


def collect(task, model, n_examples: int = N_EXAMPLES, keep_maps: int = 0):
    """Run the task's fixed examples through ``model`` in eval mode, capturing attention maps.

    Returns ``(stats, drawn)``: the head statistics, and ``(tokens, maps)`` of the first
    ``keep_maps`` examples for pictures. The forward pass is ``task.loss``: it feeds every
    input the model kind needs (encoder, decoder, cross-attention) without knowing the batch."""
    from ..attention import capture_attention_maps

    accumulator, drawn = HeadStatsAccumulator(), []
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for i, (tokens, batch) in enumerate(task.attention_examples(max(n_examples, keep_maps))):
            with torch.no_grad(), capture_attention_maps(model) as maps:
                task.loss(model, batch.to(device))
            if i < n_examples:
                for module, weights in maps:
                    accumulator.add(module, weights)
            if i < keep_maps and maps:
                drawn.append((tokens, maps))
    finally:
        model.train(was_training)
    return accumulator.result(), drawn


def skipped_note(model) -> str:
    """Why a model has no head statistics (given it recorded no attention maps)."""
    from ..attention import Attention

    variants = sorted({type(m).__name__ for m in model.modules() if isinstance(m, Attention)})
    if not variants:
        return "skipped: the model has no attention modules"
    return f"skipped: {', '.join(variants)} returns no attention weights (returns_weights is False)"


def as_metrics(stats: list[HeadStats]) -> dict[str, float]:
    """``heads/<module>/h<head>/<statistic>`` -> value."""
    return {record.head_metric(s.module, s.head, name): getattr(s, name)
            for s in stats for name in record.HEAD_STATISTICS}


def as_csv(stats: list[HeadStats]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(HeadStats.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    for s in stats:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in asdict(s).items()})
    return out.getvalue()


def head_stats_figure(stats: list[HeadStats], *, title: str | None = None):
    """One heatmap per statistic: attention modules (rows) x heads (columns), values written in."""
    import numpy as np
    from matplotlib.figure import Figure

    modules = list(dict.fromkeys(s.module for s in stats))
    n_heads = max(s.head for s in stats) + 1
    labels = {"distance": "mean distance (tokens)", "entropy": "entropy (nats)", "first_token": "mass on first token"}
    fig = Figure(figsize=(1.2 + 3 * (0.7 * n_heads + 0.6), 0.8 + 0.45 * len(modules)), layout="constrained")
    axes = fig.subplots(1, len(record.HEAD_STATISTICS), squeeze=False)[0]
    for ax, name in zip(axes, record.HEAD_STATISTICS):
        grid = np.full((len(modules), n_heads), np.nan)
        for s in stats:
            grid[modules.index(s.module), s.head] = getattr(s, name)
        image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0 if name == "first_token" else None)
        for (row, col), value in np.ndenumerate(grid):
            if not np.isnan(value):  # dark text on the bright end of viridis, light on the dark end
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if image.norm(value) > 0.6 else "white")
        ax.set_title(labels[name], fontsize=9)
        ax.set_xticks(range(n_heads), [f"h{h}" for h in range(n_heads)], fontsize=7)
        ax.set_yticks(range(len(modules)), modules if ax is axes[0] else [""] * len(modules), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
