"""Our sparse and lsh kernels against their best-known PyTorch peers on the CPU, n=4096.

Peers (not project dependencies; install them into the bench environment):

    pip install reformer-pytorch==1.4.4 product-key-memory==0.1.10 local-attention

- reformer-pytorch ``LSHAttention(bucket_size=64, n_hashes=4)`` vs our ``lsh_attention``
  with the same settings (both get shared-QK and value tensors; heads folded into batch for
  reformer-pytorch);
- local-attention ``LocalAttention(window_size=128, look_backward=1, look_forward=1)`` vs our
  ``blocked_sparse_attention`` with ``pattern=local, window=128``.

Kernels only (no projections), forward+backward with a dense upstream gradient, best of
``--repeats``, the same random tensors for both sides.

    python benchmarks/bench_peers.py [--n 4096] [--threads 1]
"""

import argparse
import importlib.util
import resource
import time

import torch

B, H, D = 1, 8, 64


def best_ms(step, repeats):
    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def fwd_bwd(fn, inputs, grad):
    def step():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=gen).requires_grad_(grad)

    have_reformer = importlib.util.find_spec("reformer_pytorch") is not None
    have_local = importlib.util.find_spec("local_attention") is not None
    if not (have_reformer and have_local):
        print("peers missing; install them into this environment with:\n"
              "  pip install reformer-pytorch==1.4.4 product-key-memory==0.1.10 local-attention")
    print(f"CPU float32, B={B} H={H} D={D}, n={n}, forward+backward, {args.threads} thread(s)")

    if have_reformer:
        from reformer_pytorch.reformer_pytorch import LSHAttention as ReformerLSH

        from attnbench.plugins.attention.lsh import LSHOptions, lsh_attention

        qk, v = rand(B, H, n, D), rand(B, H, n, D)
        grad = rand(B, H, n, D, grad=False)
        ours = best_ms(fwd_bwd(lambda a, b: lsh_attention(a, b, LSHOptions(n_hashes=4, bucket_size=64))[0], (qk, v), grad), args.repeats)
        peer = ReformerLSH(bucket_size=64, n_hashes=4)
        theirs = best_ms(fwd_bwd(lambda a, b: peer(a.reshape(B * H, n, D), b.reshape(B * H, n, D))[0].view(B, H, n, D),
                                 (qk, v), grad), args.repeats)
        print(f"lsh     ours {ours:8.1f} ms   reformer-pytorch LSHAttention {theirs:8.1f} ms   ours/theirs {ours / theirs:.2f}")

    if have_local:
        from local_attention import LocalAttention

        from attnbench.plugins.attention.sparse import SparseOptions, blocked_sparse_attention

        q, k, v = rand(B, H, n, D), rand(B, H, n, D), rand(B, H, n, D)
        grad = rand(B, H, n, D, grad=False)
        ours = best_ms(fwd_bwd(lambda a, b, c: blocked_sparse_attention(a, b, c, SparseOptions(window=128))[0], (q, k, v), grad), args.repeats)
        peer = LocalAttention(window_size=128, look_backward=1, look_forward=1, use_rotary_pos_emb=False, autopad=True)
        theirs = best_ms(fwd_bwd(peer, (q, k, v), grad), args.repeats)
        print(f"sparse  ours {ours:8.1f} ms   local-attention LocalAttention  {theirs:8.1f} ms   ours/theirs {ours / theirs:.2f}")
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
