"""What lsh's underflow-free exp saves in training, against torch's own exp and logsumexp.

lsh's hand-written chunk attention (the CPU path with dropout, i.e. training) exponentiates
each round's scores twice: in the log-sum-exp and for the probabilities. About a third of
them are typically hidden (padding: ``finfo.min``; later tokens when causal) or self (-5e4)
scores, whose exp underflows to 0, and torch's CPU exp handles every such element on a slow
path. ``_exp_`` / ``_logsumexp`` (plugins/attention/lsh.py) skip it with the same bits. This
times ``lsh_attention``'s forward + backward with them and with torch's ``exp_`` /
``logsumexp`` patched back in, in alternating rounds in one process (one thread), at the
shapes of quick.yaml's translation pairing (B=32, 4 heads, head dim 16, up to 45 tokens,
lengths 10-45 so about a third padding, bucket 8, 2 hashes, dropout 0.1), for the encoder
(bidirectional) and the decoder (causal), and checks that both give identical outputs and
gradients. The ratio is what to read on a shared machine.

    python benchmarks/bench_lsh_exp.py [--rounds 30] [--calls 20]
"""

import argparse
import statistics
import time

import torch

from attnbench.plugins.attention import lsh

BATCH, HEADS, LONGEST, SHORTEST, HEAD_DIM, DROPOUT = 32, 4, 45, 10, 16, 0.1
OPTIONS = lsh.LSHOptions(n_hashes=2, bucket_size=8)


def torch_exp(x: torch.Tensor) -> torch.Tensor:
    return x.exp_()


def torch_logsumexp(scores: torch.Tensor) -> torch.Tensor:
    return scores.logsumexp(dim=-1, keepdim=True)


def inputs(seed: int = 0):
    """Shared query/key vectors, values and a key padding mask (True = padding) of random lengths."""
    gen = torch.Generator().manual_seed(seed)
    qk, v = (torch.randn(BATCH, HEADS, LONGEST, HEAD_DIM, generator=gen).requires_grad_() for _ in range(2))
    lengths = torch.randint(SHORTEST, LONGEST + 1, (BATCH,), generator=gen)
    padding = torch.arange(LONGEST)[None, :] >= lengths[:, None]
    return qk, v, padding


def forward_backward(qk, v, padding, causal: bool, seed: int = 0):
    """Output and gradients of one call (dropout seeded, so two implementations can be compared)."""
    qk.grad = v.grad = None
    torch.manual_seed(seed)
    out, _ = lsh.lsh_attention(qk, v, OPTIONS, key_padding_mask=padding, causal=causal, dropout_p=DROPOUT)
    out.square().sum().backward()
    return [out.detach(), qk.grad, v.grad]


def use(exp_, logsumexp) -> None:
    lsh._exp_, lsh._logsumexp = exp_, logsumexp  # the chunk attention looks them up at call time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds (median reported)")
    parser.add_argument("--calls", type=int, default=20, help="forward+backward calls per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ours = (lsh._exp_, lsh._logsumexp)
    variants = {"lsh _exp_/_logsumexp": ours, "torch exp_/logsumexp": (torch_exp, torch_logsumexp)}
    tensors = inputs()

    print(f"lsh_attention forward+backward, B={BATCH} H={HEADS} n<={LONGEST} (lengths {SHORTEST}-{LONGEST}) "
          f"d={HEAD_DIM}, bucket {OPTIONS.bucket_size}, {OPTIONS.n_hashes} hashes, dropout {DROPOUT}, 1 thread; "
          f"median CPU ms per call over {args.rounds} alternating rounds of {args.calls} calls")
    disagree = []
    for causal in (False, True):
        results = {}
        for name, functions in variants.items():
            use(*functions)
            results[name] = forward_backward(*tensors, causal)
        identical = all(torch.equal(a, b) for a, b in zip(*results.values()))
        disagree += [] if identical else [causal]

        seconds = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, functions in variants.items():
                use(*functions)
                start = time.process_time()
                for _ in range(args.calls):
                    forward_backward(*tensors, causal)
                seconds[name].append((time.process_time() - start) / args.calls)
        use(*ours)
        ms = {name: statistics.median(s) * 1e3 for name, s in seconds.items()}
        ratio = ms["lsh _exp_/_logsumexp"] / ms["torch exp_/logsumexp"]
        print(f"  {'decoder (causal)' if causal else 'encoder':16s}  " + "  ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
              + f"  ratio {ratio:.3f}  identical: {identical}")
    if disagree:
        raise SystemExit("the two implementations disagree: lsh's _exp_/_logsumexp must give torch's bits")


if __name__ == "__main__":
    main()
