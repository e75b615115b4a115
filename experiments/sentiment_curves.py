"""Learning curves of a grid: a validation metric against optimiser steps, mean ± std over seeds.

    python experiments/sentiment_curves.py EXPERIMENT [EXPERIMENT ...] [--metric val/accuracy] [--png curves.png]

Reads the finished child runs of MLflow experiments (the store named by --tracking-uri,
$MLFLOW_TRACKING_URI or mlflow.yaml, as for `attnbench compare`) and prints a markdown
table: a row per evaluation, a column per model (``model (experiment)`` when several
experiments are given). The runner logs ``val/*`` once per epoch
with the epoch as its step, so steps are ``epoch * ceil(n_train / batch_size)``, capped by
``train.max_steps``. Written for the sentiment study in docs/tasks.md; works for any grid.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np
from mlflow.tracking import MlflowClient

from attnbench.compare.read import fetch_child_runs, find_experiment, select_attempts
from attnbench.run.tracking import resolve_tracking_uri


def optimiser_steps(params: dict[str, str], epoch: int) -> int:
    steps = epoch * math.ceil(int(params["task.data.n_train"]) / int(params["train.batch_size"]))
    max_steps = params.get("train.max_steps", "None")
    return min(steps, int(max_steps)) if max_steps not in ("None", "") else steps


def curves(client, experiments: list[str], metric: str) -> dict[str, dict[int, list[float]]]:
    """curve label -> optimiser step -> the metric's value in each seed's run."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for experiment in experiments:
        exp = find_experiment(client, experiment)
        finished, _, _ = select_attempts(fetch_child_runs(client, exp.experiment_id))
        for record in finished:
            label = record.model if len(experiments) == 1 else f"{record.model} ({experiment})"
            params = client.get_run(record.run_id).data.params
            for point in client.get_metric_history(record.run_id, metric):
                out[label][optimiser_steps(params, point.step)].append(point.value)
    return out


def markdown_table(series: dict[str, dict[int, list[float]]]) -> str:
    models = sorted(series)
    steps = sorted({s for by_step in series.values() for s in by_step})
    lines = ["| steps | " + " | ".join(models) + " |", "|---:|" + "---:|" * len(models)]
    for step in steps:
        cells = []
        for model in models:
            values = series[model].get(step)
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_figure(series: dict[str, dict[int, list[float]]], metric: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in sorted(series):
        steps = sorted(series[model])
        mean = np.array([np.mean(series[model][s]) for s in steps])
        std = np.array([np.std(series[model][s], ddof=1) if len(series[model][s]) > 1 else 0.0 for s in steps])
        ax.plot(steps, mean, marker=".", label=model)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", help="MLflow experiment names (a grid file's `name`)")
    parser.add_argument("--metric", default="val/accuracy")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--png", default=None, help="also draw the curves (mean, band = ± std) to this file")
    args = parser.parse_args()
    client = MlflowClient(resolve_tracking_uri(args.tracking_uri))
    series = curves(client, args.experiments, args.metric)
    print(markdown_table(series))
    if args.png:
        save_figure(series, args.metric, args.png)


if __name__ == "__main__":
    main()
