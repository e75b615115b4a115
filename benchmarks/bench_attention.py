"""Issue 3 targets on the CPU: sparse and lsh against dense SDPA, measured in one run.

Shapes B=1, H=8, head_dim=64, forward+backward, float32. Prints the measured table, the
growth exponents over n=1024..8192 and each target with its measured value.

    python benchmarks/bench_attention.py [--threads 1] [--lengths 1024,2048,4096,8192]

Every point runs in a fresh subprocess (see attnbench.bench), so peak memory is the real
growth of the resident set. ``materialised`` is softmax(QK^T)V with the n x n matrix built:
the yardstick of the lsh memory target. Variants are whole modules (projections included);
``sdpa`` is the bare kernel.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from attnbench.bench import MATERIALISED, REFERENCE, BenchResult, BenchSpec, measure
from attnbench.plugins.attention.lsh import LSHOptions, lsh_attention
from attnbench.plugins.attention.sparse import SparseOptions, blocked_sparse_attention

TARGET_N = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (1 is steadiest on a shared box)")
    parser.add_argument("--lengths", default="1024,2048,4096,8192")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kernel-rounds", type=int, default=5, help="interleaved rounds of the kernel-only comparison")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    spec = BenchSpec(variants=["sparse", "lsh"], lengths=lengths, batch=1, heads=8, head_dim=64,
                     repeats=args.repeats, threads=args.threads,
                     options={"sparse": {"pattern": "local", "window": 128}, "lsh": {"n_hashes": 4, "bucket_size": 64}})
    console = Console()
    points = []
    for n in lengths:
        extra = [MATERIALISED, "multihead"] if n == TARGET_N else []
        reference = None
        for variant in [REFERENCE, "sparse", "lsh", *extra]:
            m = measure(variant, n, spec)
            reference = m.ms if variant == REFERENCE else reference
            m.ratio_to_sdpa = m.ms / reference
            points.append(m)
            console.print(f"  {variant:>12} n={n:<5} {m.ms:9.1f} ms  x{m.ratio_to_sdpa:5.2f}  {m.peak_mib:8.1f} MiB")
    result = BenchResult(spec, points)

    table = Table(title=f"CPU float32, B=1 H=8 D=64, forward+backward, {args.threads} thread(s)")
    for col in ("variant", "n", "ms", "x SDPA", "peak MiB"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for variant in result.variants():
        for m in result.of(variant):
            table.add_row(variant, str(m.n), f"{m.ms:.0f}", f"{m.ratio_to_sdpa:.3f}", f"{m.peak_mib:.1f}")
    console.print(table)

    kernel = kernel_ratios(TARGET_N, args.threads, args.kernel_rounds)
    console.print(f"kernel only, n={TARGET_N}, best of {args.kernel_rounds} interleaved rounds: "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in kernel.items()))

    at = {m.variant: m for m in points if m.n == TARGET_N}
    exps = {v: result.growth_exponent(v) for v in (REFERENCE, "sparse", "lsh")}
    targets = Table(title="issue 3 targets")
    for col in ("target", "limit", "measured", "met"):
        targets.add_column(col)
    rows = []
    if at:
        rows += [
            ("sparse local w=128 time / SDPA, n=4096 (module)", 0.35, at["sparse"].ratio_to_sdpa),
            ("sparse local w=128 time / SDPA, n=4096 (kernel)", 0.35, kernel["sparse"] / kernel["sdpa"]),
            ("lsh 4x64 time / SDPA, n=4096 (module)", 1.0, at["lsh"].ratio_to_sdpa),
            ("lsh 4x64 time / SDPA, n=4096 (kernel)", 1.0, kernel["lsh"] / kernel["sdpa"]),
            ("lsh peak / materialised peak, n=4096", 0.25, at["lsh"].peak_mib / at[MATERIALISED].peak_mib),
        ]
    rows += [("growth exponent sparse", 1.15, exps["sparse"]), ("growth exponent lsh", 1.3, exps["lsh"])]
    for name, limit, value in rows:
        targets.add_row(name, f"<= {limit}", "-" if value is None else f"{value:.3f}",
                        "-" if value is None else ("yes" if value <= limit else "NO"))
    targets.add_row("growth exponent sdpa (reference)", "~2", f"{exps[REFERENCE]:.3f}", "")
    console.print(targets)


def kernel_ratios(n: int, threads: int, rounds: int) -> dict[str, float]:
    """Kernels on the same (1, 8, n, 64) tensors, no projections, interleaved so that load
    from other processes hits every kernel alike; the best time of each is kept."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, generator=gen).requires_grad_(True) for _ in range(3))
    grad = torch.randn(1, 8, n, 64, generator=gen)
    kernels = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "sparse": lambda: blocked_sparse_attention(q, k, v, SparseOptions(window=128))[0],
        "lsh": lambda: lsh_attention(q, v, LSHOptions(n_hashes=4, bucket_size=64))[0],
    }
    best = dict.fromkeys(kernels, float("inf"))
    for _ in range(rounds):
        for name, fn in kernels.items():
            start = time.perf_counter()
            fn().backward(grad)
            best[name] = min(best[name], (time.perf_counter() - start) * 1000)
    return best


if __name__ == "__main__":
    main()
