"""What attnbench's training loop costs on top of a bare PyTorch loop.

Trains the same transformer (experiments/quick.yaml's translation pairing, same seed, same
batches, same AdamW + schedule + clipping) for N steps twice per round:

- attnbench: ``attnbench.run.training.fit`` with MLflow tracking on (a temporary SQLite store,
  the runner's metric buffer) and a live rich progress bar updated every step, as
  ``attnbench run`` does;
- bare: the loop a user would write by hand, nothing logged.

Evaluation is excluded from both (``fit`` evaluates each epoch; its ``eval`` phase is
subtracted). Rounds alternate the two so that load changes on a shared machine hit both.
Prints the ratio attnbench / bare (median over rounds, and best round of each: on a busy
machine the best round is the one least disturbed), in wall and in CPU time; target <= 1.05.
Also checks that both loops end with identical weights (the overhead must not change
numerics; attnbench's loop steps AdamW with ``foreach=True``, the bare loop with torch's
default, a Python loop over the parameters on the CPU: the same arithmetic, so the same weights). Run:

    python benchmarks/bench_overhead.py [--steps 150] [--rounds 3] [--attention multihead] [--refresh 4]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attnbench.config import expand_grid, load_experiment
from attnbench.phases import EVAL, PhaseClock, TRACKING, TimedCalls
from attnbench.plugin_host import get_host
from attnbench.run.training import fit, seed_everything

try:  # the runner's metric buffer (moved to pairing.py by the executor rewrite)
    from attnbench.run.pairing import MetricBuffer
except ImportError:
    from attnbench.run.runner import MetricBuffer

TARGET = 1.05
GRID = Path(__file__).resolve().parents[1] / "experiments" / "quick.yaml"


def pairing(attention: str, steps: int, threads: int):
    """The quick grid's translation pairing for ``attention``, with tiny evaluation splits."""
    overrides = [f"train.max_steps={steps}", f"train.threads={threads}", "train.save_checkpoint=false",
                 "tasks.translation.data.n_validation=4", "tasks.translation.data.n_test=4"]
    experiment, _ = load_experiment(GRID, overrides)
    host = get_host([])
    specs = [s for s in expand_grid(experiment, host) if s.task == "translation" and s.model_label == f"transformer-{attention}"]
    if not specs:
        raise SystemExit(f"--attention {attention!r}: no transformer-{attention} pairing in {GRID}")
    spec = specs[0]
    task = host.task.get(spec.task).factory(spec.task_options, cache_dir=Path(".attnbench_cache"))
    io_ = task.prepare()
    family = host.model.get(spec.family).factory(spec.family_options)

    def build():
        seed_everything(spec.seed)
        return family.build(io_, spec.dims, host)

    return spec, task, build


def new_run(store: Path) -> tuple[object, str]:
    """A client on the SQLite store and a fresh run in it (set up before the clock starts, as the
    runner creates a pairing's run before training it)."""
    client = TimedCalls(MlflowClient(f"sqlite:///{store}"), TRACKING)
    experiment_id = client.create_experiment(f"overhead-{time.time_ns()}", artifact_location=str(store.parent / "artifacts"))
    return client, client.create_run(experiment_id).info.run_id


def run_attnbench(spec, task, model, store: Path, refresh: float) -> tuple[float, float]:
    """(wall, CPU) seconds ``fit`` spends outside evaluation, tracking to MLflow and drawing progress."""
    client, run_id = new_run(store)
    buffer = MetricBuffer(client, run_id)
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    clock, cpu = PhaseClock(), CpuClock()
    # drawn as the runner draws it: a live bar redrawn `refresh` times a second, updated every step
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, refresh_per_second=refresh) as progress, clock.current():
        bar = progress.add_task("train", total=spec.train.max_steps, info="")
        fit(task, model, spec.train, seed=spec.seed, device=torch.device("cpu"), log_metric=buffer.log,
            on_step=lambda step, loss: progress.update(bar, completed=step, info=f"loss {loss:.3f}"),
            on_phase=lambda phase: (progress.update(bar, info=phase), cpu.pause(phase.startswith("evaluating"))))
        buffer.flush()  # the loop's own writes; ending the run is the runner's, once per pairing
    totals = clock.totals()
    client.set_terminated(run_id, "FINISHED")
    return sum(totals.values()) - totals.get(EVAL, 0.0), cpu.total()


def run_bare(spec, task, model) -> tuple[float, float]:
    """(wall, CPU) seconds of the hand-written loop: same optimiser, schedule, clipping, batches."""
    cfg = spec.train
    started, cpu_started = time.perf_counter(), time.process_time()
    generator = seed_everything(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    model.train()
    step = 0
    while step < cfg.max_steps:
        for batch in task.batches("train", cfg.batch_size, shuffle=True, generator=generator):
            loss = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            if step >= cfg.max_steps:
                break
    return time.perf_counter() - started, time.process_time() - cpu_started


class CpuClock:
    """This process's CPU seconds (all threads: rich's refresh thread counts), evaluation paused.

    On a shared machine wall time mostly measures the neighbours; CPU time measures our work."""

    def __init__(self):
        self.spent, self.since = 0.0, time.process_time()

    def pause(self, paused: bool) -> None:
        now = time.process_time()
        if self.since is not None:
            self.spent += now - self.since
        self.since = None if paused else now

    def total(self) -> float:
        self.pause(True)
        return self.spent


def max_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.state_dict().values(), b.state_dict().values())
               if pa.is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attention", default="multihead")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--refresh", type=float, default=4, help="progress redraws a second (the runner: 4; rich's default: 10)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec, task, build = pairing(args.attention, args.steps, args.threads)
    if task.num_batches("train", spec.train.batch_size) < args.steps:
        raise SystemExit(f"--steps {args.steps}: keep it within one epoch so that no validation runs in between")
    ratios, cpu_ratios, best = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        new_run(Path(tmp) / "mlflow.db")  # create and migrate the store once, untimed
        # the first AdamW imports torch._dynamo (seconds): pay it before either loop is timed
        torch.optim.AdamW(build().parameters())
        for r in range(args.rounds):
            tracked, bare = build(), build()
            order = [("attnbench", tracked), ("bare", bare)] if r % 2 == 0 else [("bare", bare), ("attnbench", tracked)]
            seconds = {}
            for name, model in order:
                seconds[name] = (run_attnbench(spec, task, model, Path(tmp) / "mlflow.db", args.refresh) if name == "attnbench"
                                 else run_bare(spec, task, model))
            diff = max_weight_difference(tracked, bare)
            (wall_a, cpu_a), (wall_b, cpu_b) = seconds["attnbench"], seconds["bare"]
            for name, pair in seconds.items():
                best[name] = tuple(min(x, y) for x, y in zip(best.get(name, pair), pair))
            ratios.append(wall_a / wall_b)
            cpu_ratios.append(cpu_a / cpu_b)
            print(f"round {r + 1}: wall attnbench {wall_a:.2f} s / bare {wall_b:.2f} s = {ratios[-1]:.3f}; "
                  f"CPU {cpu_a:.2f} s / {cpu_b:.2f} s = {cpu_ratios[-1]:.3f}; max weight difference {diff:.2e}", flush=True)
            if diff != 0.0:
                print("  WARNING: the two loops ended with different weights")
    print(f"{args.steps} steps of transformer-{args.attention} on translation, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}, median of {args.rounds} rounds (target <= {TARGET}):")
    for i, (name, values) in enumerate((("wall", ratios), ("CPU", cpu_ratios))):
        ratio, of_best = statistics.median(values), best["attnbench"][i] / best["bare"][i]
        print(f"  {name:4s} attnbench / bare = {ratio:.3f} (median of rounds), {of_best:.3f} (best round of each) "
              f"{'OK' if min(ratio, of_best) <= TARGET else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
