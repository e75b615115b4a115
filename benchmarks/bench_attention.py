"""Speed targets of the attention modules (issues 3 and 13), measured in one run.

CPU (default): float32, B=1 H=8 D=64, forward+backward, whole modules (projections included)
against the multihead module, plus bare SDPA and the issue-3 kernel and memory targets.

    python benchmarks/bench_attention.py [--threads 1] [--lengths 1024,2048,4096,8192]

CUDA: the same code path as ``attnbench bench --device cuda --dtype bfloat16``, modules
against bare SDPA, up to 32k tokens, and sparse at 65k (it must not run out of memory).

    python benchmarks/bench_attention.py --device cuda --dtype bfloat16 [--lengths 1024,...,32768]

Every point runs in a fresh subprocess (see attnbench.bench), so peak memory is the real
growth of the resident set (CPU) or of allocated CUDA memory. ``materialised`` is
softmax(QK^T)V with the n x n matrix built: the yardstick of the lsh memory target.
"""

import argparse
import math
import time

from rich.console import Console
from rich.table import Table

from attnbench.bench import MATERIALISED, REFERENCE, BenchResult, BenchSpec, measure

OPTIONS = {"sparse": {"pattern": "local", "window": 128}, "lsh": {"n_hashes": 4, "bucket_size": 64}}
CPU_TARGET_N, CUDA_TARGET_N, CUDA_NO_OOM_N = 4096, 16384, 65536


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU worker (1 is steadiest on a shared box)")
    parser.add_argument("--lengths", default=None, help="default: 1024,2048,4096,8192 (cpu); 1024,...,32768 (cuda)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per point, best kept (default 2 cpu, 5 cuda)")
    parser.add_argument("--kernel-rounds", type=int, default=5, help="cpu: interleaved rounds of the kernel-only comparison")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    default_lengths = "1024,2048,4096,8192,16384,32768" if cuda else "1024,2048,4096,8192"
    lengths = [int(n) for n in (args.lengths or default_lengths).split(",")]
    spec = BenchSpec(variants=["multihead", "sparse", "lsh"], lengths=lengths, device=args.device,
                     dtype=args.dtype or ("bfloat16" if cuda else "float32"), batch=1, heads=8, head_dim=64,
                     repeats=args.repeats or (5 if cuda else 2), threads=None if cuda else args.threads, options=OPTIONS)
    console = Console()
    points = sweep(spec, extra={CPU_TARGET_N: [MATERIALISED]} if not cuda else {}, console=console)
    if cuda:
        points += sweep_one(spec, "sparse", CUDA_NO_OOM_N, console)
    result = BenchResult(spec, [m for m in points if m.n in lengths])

    table = Table(title=f"{spec.device} {spec.dtype}, B=1 H=8 D=64, forward+backward"
                  + ("" if cuda else f", {args.threads} thread(s)"))
    for col in ("variant", "n", "ms", "x SDPA", "x multihead", "peak MiB"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    multihead = {m.n: m.ms for m in points if m.variant == "multihead"}
    for m in sorted(points, key=lambda m: (m.variant, m.n)):
        vs_mh = f"{m.ms / multihead[m.n]:.3f}" if m.n in multihead else "-"
        table.add_row(m.variant, str(m.n), f"{m.ms:.1f}", f"{m.ratio_to_sdpa:.3f}", vs_mh, f"{m.peak_mib:.1f}")
    console.print(table)
    rows = cuda_targets(points) if cuda else cpu_targets(points, result, args)
    targets = Table(title="targets")
    for col in ("target", "limit", "measured", "met"):
        targets.add_column(col)
    for name, limit, value in rows:
        targets.add_row(name, f"<= {limit}", "-" if value is None else f"{value:.3f}",
                        "-" if value is None else ("yes" if value <= limit else "NO"))
    console.print(targets)


def sweep(spec: BenchSpec, extra: dict[int, list[str]], console) -> list:
    points = []
    for n in spec.lengths:
        reference = None
        for variant in [REFERENCE, *spec.variants, *extra.get(n, [])]:
            m = measure(variant, n, spec)
            reference = m.ms if variant == REFERENCE else reference
            m.ratio_to_sdpa = m.ms / reference
            points.append(m)
            console.print(f"  {variant:>12} n={n:<6} {m.ms:9.2f} ms  x{m.ratio_to_sdpa:6.3f} SDPA  {m.peak_mib:9.1f} MiB")
    return points


def sweep_one(spec: BenchSpec, variant: str, n: int, console) -> list:
    """One long point and its SDPA reference; a failure (e.g. out of memory) is printed, not raised."""
    points = []
    for name in (REFERENCE, variant):
        try:
            m = measure(name, n, spec)
        except Exception as exc:  # the point of this row is to see whether it fails
            console.print(f"  {name:>12} n={n:<6} FAILED: {exc}")
            continue
        m.ratio_to_sdpa = m.ms / points[0].ms if points else 1.0
        points.append(m)
        console.print(f"  {name:>12} n={n:<6} {m.ms:9.2f} ms  x{m.ratio_to_sdpa:6.3f} SDPA  {m.peak_mib:9.1f} MiB")
    return points


def _at(points, variant, n):
    return next((m for m in points if m.variant == variant and m.n == n), None)


def _ratio(points, variant, n, against="multihead"):
    a, b = _at(points, variant, n), _at(points, against, n)
    return None if a is None or b is None else a.ms / b.ms


def cpu_targets(points, result: BenchResult, args) -> list[tuple[str, float, float | None]]:
    rows = [
        ("issue 13: sparse module / multihead module, n=4096", 0.30, _ratio(points, "sparse", 4096)),
        ("issue 13: lsh module / multihead module, n=4096", 0.75, _ratio(points, "lsh", 4096)),
        ("issue 13: sparse module / multihead module, n=1024", 0.8, _ratio(points, "sparse", 1024)),
        ("issue 13: lsh module / multihead module, n=1024", 1.5, _ratio(points, "lsh", 1024)),
        ("growth exponent sparse", 1.15, result.growth_exponent("sparse")),
        ("growth exponent lsh", 1.3, result.growth_exponent("lsh")),
        ("issue 3: sparse module / SDPA, n=4096", 0.35, _ratio(points, "sparse", 4096, REFERENCE)),
        ("issue 3: lsh module / SDPA, n=4096", 1.0, _ratio(points, "lsh", 4096, REFERENCE)),
    ]
    lsh, materialised = _at(points, "lsh", CPU_TARGET_N), _at(points, MATERIALISED, CPU_TARGET_N)
    if lsh and materialised:
        rows.append(("issue 3: lsh peak / materialised peak, n=4096", 0.25, lsh.peak_mib / materialised.peak_mib))
    if _at(points, REFERENCE, CPU_TARGET_N):
        kernel = kernel_times(CPU_TARGET_N, args.threads, args.kernel_rounds)
        rows += [("issue 3: sparse kernel / SDPA kernel, n=4096", 0.35, kernel["sparse"] / kernel["sdpa"]),
                 ("issue 3: lsh kernel / SDPA kernel, n=4096", 1.0, kernel["lsh"] / kernel["sdpa"])]
    return rows


def cuda_targets(points) -> list[tuple[str, float, float | None]]:
    big = _at(points, "sparse", CUDA_NO_OOM_N)
    return [
        ("sparse (FlexAttention) / SDPA, n=16384", 0.35, _ratio(points, "sparse", CUDA_TARGET_N, REFERENCE)),
        ("lsh / SDPA, n=16384", 1.0, _ratio(points, "lsh", CUDA_TARGET_N, REFERENCE)),
        ("sparse n=65536 ran (0 = yes, inf = failed)", 0.0, 0.0 if big else math.inf),
    ]


def kernel_times(n: int, threads: int, rounds: int) -> dict[str, float]:
    """Kernels on the same (1, 8, n, 64) tensors, no projections, interleaved so that load
    from other processes hits every kernel alike; the best time of each is kept."""
    import torch
    import torch.nn.functional as F

    from attnbench.plugins.attention.lsh import LSHOptions, lsh_attention
    from attnbench.plugins.attention.sparse import SparseOptions, blocked_sparse_attention

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, generator=gen).requires_grad_(True) for _ in range(3))
    grad = torch.randn(1, 8, n, 64, generator=gen)
    kernels = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "sparse": lambda: blocked_sparse_attention(q, k, v, SparseOptions(**OPTIONS["sparse"]))[0],
        "lsh": lambda: lsh_attention(q, v, LSHOptions(**OPTIONS["lsh"]))[0],
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
