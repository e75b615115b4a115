"""Cost of the question-aware span head (and the question-match input) per training step.

Times forward+backward+AdamW steps on quick.yaml's qa batches (synthetic stories, batch 32,
d_model 64, 2 layers, one thread) for each built-in family's span model as built today and
for a reference with the plain linear start/end head on the same encoder. Rounds alternate
between the two, so load on a shared machine hits both alike; the ratio is what to read.

    python benchmarks/bench_qa_span.py [--rounds 5] [--steps 20]
"""

import argparse
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from attnbench import ModelDims
from attnbench.plugin_host import get_host
from attnbench.plugins.tasks.qa import QATask

FAMILIES = {"rnn-lstm": ("rnn", {"cell": "lstm"}), "transformer-multihead": ("transformer", {"attention": "multihead"})}


class LinearSpanHead(nn.Module):
    """The head before the change: one linear layer to (start, end) logits."""

    def __init__(self, d_in: int):
        super().__init__()
        self.linear = nn.Linear(d_in, 2)

    def forward(self, h, tokens, padding_mask):
        logits = self.linear(h).masked_fill(padding_mask[..., None], torch.finfo(h.dtype).min)
        return logits.unbind(-1)


def reference(model: nn.Module) -> nn.Module:
    """The same span model with the linear head and no question-match input."""
    model.span_head = LinearSpanHead(model.span_head.start_linear.in_features)
    model.question_match = None
    return model


def seconds_per_step(model: nn.Module, task: QATask, batches: list) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    for batch in batches:
        loss = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round and model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = get_host()
    raw = {"data": {"source": "synthetic", "n_train": 1500, "n_validation": 10, "n_test": 10},
           "story": {"stale_moves": True, "n_people": 3, "min_sentences": 2, "max_sentences": 8}}
    with tempfile.TemporaryDirectory() as cache:
        task = QATask(QATask.parse_options(raw, "tasks.qa"), cache_dir=cache)
        io = task.prepare()
    generator = torch.Generator().manual_seed(0)
    batches = list(task.batches("train", 32, shuffle=True, generator=generator))[: args.steps]
    dims = ModelDims(d_model=64, n_layers=2, n_heads=4, dropout=0.1)
    table = Table(title=f"qa span model, seconds per training step (median of {args.rounds} alternating rounds)")
    for column in ("family", "linear head (reference)", "question-aware head", "ratio"):
        table.add_column(column, justify="right" if column != "family" else "left")
    for label, (name, raw_options) in FAMILIES.items():
        cls = host.model.get(name).factory
        family = cls(cls.parse_options(raw_options))
        if hasattr(family, "validate"):
            family.validate(host)
        torch.manual_seed(0)
        models = {"reference": reference(family.build(io, dims, host)), "current": family.build(io, dims, host)}
        times = {key: [] for key in models}
        for _ in range(args.rounds):
            for key, model in models.items():
                times[key].append(seconds_per_step(model, task, batches))
        ref, cur = (sorted(times[key])[len(times[key]) // 2] for key in ("reference", "current"))
        table.add_row(label, f"{ref * 1000:.1f} ms", f"{cur * 1000:.1f} ms", f"{cur / ref:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
