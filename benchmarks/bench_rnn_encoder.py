"""Speed of the rnn family's padded RNN run against the packed path it replaced.

Times forward + backward (loss on outputs and final states, training mode: dropout between
layers) of squad.yaml's / multi30k.yaml's encoder RNN (bidirectional, 2 layers, 128 units) on
one thread, in alternating rounds: ``run_padded`` (plugins/models/padded_rnn.py) against
pack_padded_sequence -> the same module -> pad_packed_sequence. Shapes: QA (B=32, L=256,
lengths 120-256) and translation (B=64, L=25, lengths 6-25). The ratio is what to read on a
shared machine; the rows also check that both paths agree.

    python benchmarks/bench_rnn_encoder.py [--rounds 3] [--cells lstm,gru] [--shapes qa,translation]
"""

import argparse
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnbench.plugins.models.padded_rnn import run_padded
from attnbench.plugins.models.rnn import make_rnn

# batch, padded length, shortest length, rounds per --rounds (short steps are noisier)
SHAPES = {"qa": (32, 256, 120, 1), "translation": (64, 25, 6, 5)}
HIDDEN, LAYERS, DROPOUT = 128, 2, 0.1


def packed(rnn, x, lengths):
    out = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, state = rnn(out)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], state


def step_seconds(path, rnn, x, lengths) -> float:
    x = x.detach().requires_grad_()
    start = time.perf_counter()
    out, state = path(rnn, x, lengths)
    state = state if isinstance(state, tuple) else (state,)
    (out.sum() + sum(s.sum() for s in state)).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (x5 for translation); the fastest of each path counts")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'cell':5} {'shape':12} {'packed s':>9} {'padded s':>9} {'padded/packed':>14}  max |diff|")
    for cell in args.cells.split(","):
        for shape in args.shapes.split(","):
            batch, length, shortest, rounds = SHAPES[shape]
            torch.manual_seed(0)
            rnn = make_rnn(cell, HIDDEN, HIDDEN, LAYERS, DROPOUT, bidirectional=True)
            x = torch.randn(batch, length, HIDDEN)
            lengths = torch.randint(shortest, length + 1, (batch,))
            lengths[0] = length
            with torch.no_grad():
                rnn.eval()
                diff = (packed(rnn, x, lengths)[0] - run_padded(rnn, x, lengths)[0]).abs().max().item()
                rnn.train()
            times = {"packed": [], "padded": []}
            for _ in range(args.rounds * rounds):
                times["packed"].append(step_seconds(packed, rnn, x, lengths))
                times["padded"].append(step_seconds(run_padded, rnn, x, lengths))
            best = {name: min(t) for name, t in times.items()}
            print(f"{cell:5} {shape:12} {best['packed']:9.3f} {best['padded']:9.3f} "
                  f"{best['padded'] / best['packed']:14.2f}  {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
