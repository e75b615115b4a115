"""Cost of the qa task's trivial baselines against one model evaluation of the same split.

Loads experiments/squad.yaml's qa task on the local SQuAD dev copy (its test slice: 1436
questions) and times, in alternating rounds on one thread: computing the trivial baselines
from scratch (sentence splitting and official EM/F1 of three baselines; the task does it once
per split and caches it) and one evaluation of the split with squad.yaml's LSTM, untrained,
with the baselines already cached. The ratio is what to read on a shared machine.

    python benchmarks/bench_qa_baselines.py [--data ../shared/data/squad_v1] [--split test] [--rounds 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from attnbench import ModelDims
from attnbench.config import TrainConfig
from attnbench.plugin_host import get_host
from attnbench.plugins.tasks.qa import QATask
from attnbench.run.training import evaluate_split

GRID = Path(__file__).resolve().parents[1] / "experiments" / "squad.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/squad_v1", help="folder with validation.jsonl.gz")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (Path(args.data) / "validation.jsonl.gz").is_file():
        raise SystemExit(f"--data {args.data}: no validation.jsonl.gz there (the local SQuAD v1.1 dev copy)")
    torch.set_num_threads(1)
    grid = yaml.safe_load(GRID.read_text())
    options = grid["tasks"]["qa"]
    options["data"]["path"] = args.data
    with tempfile.TemporaryDirectory() as cache:
        task = QATask(QATask.parse_options(options, "tasks.qa"), cache_dir=cache)
        io = task.prepare()
        host = get_host()
        family_cls = host.model.get("rnn").factory
        model = family_cls(family_cls.parse_options({"cell": "lstm"})).build(io, ModelDims(**grid["model"]), host)
        train = TrainConfig(**grid["train"])
        baselines, evaluations = [], []
        for _ in range(args.rounds):
            task._baselines.clear()  # from scratch, as at the split's first evaluation
            started = time.perf_counter()
            scores = task.trivial_baselines(args.split).scores
            baselines.append(time.perf_counter() - started)
            started = time.perf_counter()
            evaluate_split(task, model, args.split, train, torch.device("cpu"))
            evaluations.append(time.perf_counter() - started)
    n = len(task.examples[args.split])
    print(f"{args.split}: {n} questions; F1 " + ", ".join(f"{name} {s['f1']:.1f}" for name, s in scores.items()))
    print(f"trivial baselines (best of {args.rounds}): {min(baselines):.2f} s; one evaluation of the split with "
          f"squad.yaml's LSTM (baselines cached): {min(evaluations):.1f} s; ratio {min(baselines) / min(evaluations):.3f}")


if __name__ == "__main__":
    main()
