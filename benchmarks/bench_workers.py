"""Issue 10 target: the wall time of a slice of the default grid with --workers 2 against
--workers 1, measured in one run. Target on a 2-core machine: ratio <= 0.6.

    python benchmarks/bench_workers.py [--max-steps 60] [--tasks sentiment,qa] [--workers 2]

The slice: every model of experiments/quick.yaml on the given tasks, one seed, each pairing
cut to ``--max-steps`` steps (``train.threads: 1``, as the default grid). Each setting runs
``attnbench run`` as a fresh process into a fresh store, whole command timed (start-up, worker
start-up, training, summary), the two settings alternated ``--rounds`` times. The load
average is printed beside the figures: on a shared machine the ratio says more than the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def slice_of_default_grid(tasks: list[str], workdir: Path) -> Path:
    """experiments/quick.yaml restricted to ``tasks`` (all its models, its settings)."""
    grid = yaml.safe_load((REPO / "experiments" / "quick.yaml").read_text())
    grid["grid"]["task"] = tasks
    grid["tasks"] = {name: options for name, options in grid["tasks"].items() if name in tasks}
    path = workdir / "slice.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def timed_run(workers: int, grid: Path, max_steps: int, workdir: Path, tag: str) -> float:
    argv = [sys.executable, "-c", "from attnbench.cli import main; main()", "run", str(grid),
            "--tracking-uri", f"sqlite:///{workdir / f'{tag}.db'}", "--workers", str(workers),
            "--set", f"train.max_steps={max_steps}",
            "--set", "train.save_checkpoint=false", "--set", f"name=bench_workers_{tag}"]
    env = os.environ | {"ATTNBENCH_CACHE": str(workdir / "cache")}
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"attnbench run --workers {workers} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sentiment,qa", help="tasks of the default grid to run (all its models each)")
    parser.add_argument("--max-steps", type=int, default=60, help="steps per pairing")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternated repetitions of both settings")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        workdir = Path(tmp)
        grid = slice_of_default_grid(args.tasks.split(","), workdir)
        # prepare the tasks' data once (tokenizers, synthetic corpora), outside the timings
        timed_run(1, grid, 1, workdir, "warmup")
        serial, parallel = [], []
        for r in range(args.rounds):
            serial.append(timed_run(1, grid, args.max_steps, workdir, f"serial{r}"))
            parallel.append(timed_run(args.workers, grid, args.max_steps, workdir, f"parallel{r}"))
    load_after = os.getloadavg()
    s, p = statistics.median(serial), statistics.median(parallel)
    pairings = 5 * len(args.tasks.split(","))
    print(f"slice: {pairings} pairings of experiments/quick.yaml ({args.tasks}), {args.max_steps} steps each, "
          f"{args.rounds} round(s), {os.cpu_count()} CPU cores")
    print(f"--workers 1: {s:.1f} s   --workers {args.workers}: {p:.1f} s   (median wall time of the whole command)")
    print(f"ratio --workers {args.workers} / --workers 1: {p / s:.2f}   (target <= 0.6)")
    print(f"load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, "
          f"after: {'/'.join(f'{x:.1f}' for x in load_after)}")


if __name__ == "__main__":
    main()
