"""How long `attnbench compare` takes on a big grid: 500 child runs in a local SQLite store.

Builds the runs synthetically (3 tasks x 20 models x 8 seeds, plus 20 failed runs, each
finished run with a 100-example predictions.jsonl), then times the summary: the one
search query, aggregation, significance tests against the no-attention baselines and every output
format. Target: at most 5 s for the whole summary. Run:

    python benchmarks/bench_compare.py [--runs-per-cell 8] [--models 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from attnbench.compare import read, render as compare_format, summary as compare
from attnbench.plugin_host import get_host

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic-run fixture
from synthetic_runs import TASKS, create_parent, log_child_run

TARGET_S = 5.0


def build(client, experiment_id: str, n_models: int, n_seeds: int, n_failed: int, n_examples: int) -> int:
    parent = create_parent(client, experiment_id, "big")
    models = ["rnn-lstm"] + [f"transformer-variant{i:02d}" for i in range(n_models - 1)]
    count = 0
    for task in TASKS:
        for m, model in enumerate(models):
            for seed in range(n_seeds):
                log_child_run(client, experiment_id, parent, task=task, model=model, seed=seed,
                              skill=0.5 + 0.4 * m / n_models, n_examples=n_examples, epochs=1, steps_per_epoch=3)
                count += 1
    for i in range(n_failed):
        log_child_run(client, experiment_id, parent, task="sentiment", model=f"transformer-broken{i:02d}",
                      seed=0, status="FAILED")
        count += 1
    client.set_terminated(parent)
    return count


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--runs-per-cell", type=int, default=8, help="seeds per (task, model)")
    parser.add_argument("--failed", type=int, default=20)
    parser.add_argument("--examples", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        exp = client.create_experiment("big", artifact_location=f"{tmp}/artifacts")
        n_runs, build_s = timed(lambda: build(client, exp, args.models, args.runs_per_cell, args.failed, args.examples))
        print(f"built {n_runs} child runs in {build_s:.1f} s (setup, not timed)")

        host = get_host()  # plugin discovery (which declares the tests) is not what is timed
        records, fetch_s = timed(lambda: read.fetch_child_runs(client, exp))
        plain, plain_s = timed(lambda: compare.summarize(records, experiment="big", client=client,
                                                         with_significance=False))
        full, sig_s = timed(lambda: compare.summarize(records, experiment="big", client=client, host=host))
        _, render_s = timed(lambda: [compare_format.render(full, f) for f in compare_format.FORMATS])
        total = fetch_s + sig_s + render_s
        tested = sum(r.p_value is not None for t in full.tasks for r in t.rows)

        print(f"fetch (1 search_runs query, {len(records)} runs): {fetch_s:6.2f} s")
        print(f"aggregate without significance:           {plain_s:6.2f} s")
        print(f"aggregate + significance ({tested} tests):      {sig_s:6.2f} s")
        print(f"render table/markdown/csv/json:           {render_s:6.2f} s")
        print(f"total summary (fetch + significance + render): {total:.2f} s "
              f"(target <= {TARGET_S:.0f} s: {'OK' if total <= TARGET_S else 'MISSED'}; "
              f"{total / TARGET_S:.2f} of the budget)")
        print(f"unfinished runs listed separately: {len(full.unfinished)}")
        for task in TASKS:  # where the significance time goes
            subset = [r for r in records if r.task == task]
            _, task_s = timed(lambda: compare.summarize(subset, experiment="big", client=client, host=host))
            print(f"  significance + aggregation, {task:<11} ({len(subset)} runs): {task_s:6.2f} s")


if __name__ == "__main__":
    main()
