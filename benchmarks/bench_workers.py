"""Issue 10 target: the wall time of a slice of the default grid with --workers 2 against
--workers 1, measured in one run. Target on a 2-core machine: ratio <= 0.6.

    python benchmarks/bench_workers.py [--tasks sentiment,translation] [--max-steps 200] [--workers 2] [--rounds 1]

The default slice is representative of the default grid (experiments/quick.yaml): two of its
tasks with all five models each (10 pairings), its settings (``train.threads: 1``, its data
sizes, evaluation and pictures), one seed. ``--max-steps 200`` keeps sentiment at its full
budget (188 steps) and cuts translation to a quarter of its 800 (the grid's long pairings), so
that every pairing trains for several seconds to a minute and worker start-up (imports, the
store, the tasks' data: a few seconds per worker) is paid in the proportion a real grid pays
it. The whole default grid is ``--tasks sentiment,translation,qa --max-steps 0`` (no cap).

Each setting runs ``attnbench run`` as a fresh process into a fresh store, whole command timed
(start-up, worker start-up, training, summary); the two settings alternate ``--rounds`` times.
Before that, ``attnbench run --dry-run`` (the preflight) prepares the tasks' data and tokenizer
cache once, outside the timings. Also printed: the CPU seconds of the invoking process itself
(not its workers): with workers it only waits and redraws progress, so it must stay near zero
rather than take a core from them. The load average is printed beside the figures: on a shared
machine the ratio says more than the times.
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


# Runs attnbench in this interpreter and prints its own CPU seconds (RUSAGE_SELF: the invoking
# process's threads, not its worker processes) on stderr as it exits.
RUN_AND_REPORT_CPU = (
    "import atexit, resource, sys\n"
    "def report():\n"
    "    usage = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    sys.stderr.write(f'\\nPARENT_CPU_S {usage.ru_utime + usage.ru_stime:.3f}\\n')\n"
    "atexit.register(report)\n"
    "from attnbench.cli import main\n"
    "main()\n")


def attnbench_argv(grid: Path, workdir: Path, tag: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", RUN_AND_REPORT_CPU, "run", str(grid), "--tracking-uri",
            f"sqlite:///{workdir / f'{tag}.db'}", "--set", "train.save_checkpoint=false",
            "--set", f"name=bench_workers_{tag}", *extra]


def run_attnbench(argv: list[str], workdir: Path) -> tuple[float, float]:
    """(wall seconds of the whole command, CPU seconds of the invoking process)."""
    env = os.environ | {"ATTNBENCH_CACHE": str(workdir / "cache")}
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[3:])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    cpu = [float(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PARENT_CPU_S ")]
    return took, cpu[-1] if cpu else float("nan")


def timed_run(workers: int, grid: Path, max_steps: int, workdir: Path, tag: str) -> tuple[float, float, float]:
    """(wall, parent CPU, occupancy): see :func:`occupancy`."""
    cap = ["--set", f"train.max_steps={max_steps}"] if max_steps else []
    wall, cpu = run_attnbench(attnbench_argv(grid, workdir, tag, "--workers", str(workers), *cap), workdir)
    return wall, cpu, occupancy(f"sqlite:///{workdir / f'{tag}.db'}", f"bench_workers_{tag}", workers)


def occupancy(uri: str, experiment: str, workers: int) -> float:
    """How busy the workers were from the first pairing's start to the last one's end: the
    pairings' summed wall time over ``workers`` x that span (1.0: never idle). Neighbours that
    slow every pairing down leave it unchanged, unlike the ratio of wall times; start-up gaps,
    claims and a long pairing running alone at the end lower it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000) if "mlflow.parentRunId" in r.data.tags]
    span = max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)
    return sum(r.info.end_time - r.info.start_time for r in runs) / (workers * span)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sentiment,translation", help="tasks of the default grid to run (all its models each)")
    parser.add_argument("--max-steps", type=int, default=200, help="cap on steps per pairing (0: the grid's own budgets)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternated repetitions of both settings")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        workdir = Path(tmp)
        grid = slice_of_default_grid(tasks, workdir)
        # the preflight prepares every task's data and tokenizer cache once, outside the timings
        run_attnbench(attnbench_argv(grid, workdir, "warmup", "--dry-run"), workdir)
        serial, parallel = [], []
        for r in range(args.rounds):
            serial.append(timed_run(1, grid, args.max_steps, workdir, f"serial{r}"))
            parallel.append(timed_run(args.workers, grid, args.max_steps, workdir, f"parallel{r}"))
    load_after = os.getloadavg()
    s, p = (statistics.median(t for t, _, _ in runs) for runs in (serial, parallel))
    parent_cpu = statistics.median(c for _, c, _ in parallel)
    busy = statistics.median(o for _, _, o in parallel)
    budget = f"at most {args.max_steps} steps each" if args.max_steps else "the grid's own budgets"
    print(f"slice: {5 * len(tasks)} pairings of experiments/quick.yaml ({args.tasks}), {budget}, "
          f"{args.rounds} round(s), {os.cpu_count()} CPU cores")
    print(f"--workers 1: {s:.1f} s   --workers {args.workers}: {p:.1f} s   (median wall time of the whole command)")
    print(f"ratio --workers {args.workers} / --workers 1: {p / s:.2f}   (target <= 0.6)")
    print(f"--workers {args.workers}: workers busy {busy:.0%} of the time from the first pairing's start to the last "
          "one's end (idle: a worker still starting, claims, a pairing left alone at the end; load from neighbours does not lower it)")
    print(f"invoking process with --workers {args.workers}: {parent_cpu:.1f} CPU s over {p:.0f} s of wall "
          f"({parent_cpu / p:.1%} of one core; start-up, preflight and summary included)")
    print(f"load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, "
          f"after: {'/'.join(f'{x:.1f}' for x in load_after)}")


if __name__ == "__main__":
    main()
