"""Efficiency of attention variants against sequence length (the library behind ``attnbench bench``).

Every (variant, length) point is measured in a fresh Python subprocess. Peak memory is what
one forward+backward call itself allocates and holds at its high point: on the CPU from the
allocation events of torch's profiler (``profile_memory=True``), on CUDA from
``torch.cuda.max_memory_allocated``. (Resident-set deltas read 0 MiB for small n: the heap
already held the pages.) Time is the best of a few forward+backward passes in the same worker,
under glibc's default allocator settings, as in a training process.

A growth exponent is the slope of a straight line through log(time) against log(n); when
that line explains the points poorly (R² below :data:`POOR_FIT_R2`) or the slope is
negative, timings were too noisy to read an exponent from, and the result says so.

Two reference rows need no plugin: ``sdpa`` (bare ``scaled_dot_product_attention`` on
``(B, H, n, D)`` tensors, always measured) and ``materialised`` (explicit
``softmax(QK^T / sqrt(D)) V``, the memory yardstick of a full attention matrix).
Variants are measured as whole modules (projections included) with default options.
A variant name is resolved through the plugin host (built-ins, installed plugins and
``--plugin`` modules alike); the worker imports the class the host resolved.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import AttnbenchError, BadInputError
from .run.record import Tag

REFERENCE = "sdpa"
MATERIALISED = "materialised"
BUILTIN_REFERENCES = (REFERENCE, MATERIALISED)
DTYPES = ("float32", "bfloat16")
DEVICES = ("cpu", "cuda")
DEFAULT_EXPERIMENT = "attnbench-bench"
WARMUP_LENGTH = 128
POOR_FIT_R2 = 0.9


@dataclass
class BenchSpec:
    """What to measure. ``options`` maps a variant name to its attention options (dict)."""

    variants: list[str]
    lengths: list[int]
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    repeats: int = 3
    options: dict[str, dict] = field(default_factory=dict)
    threads: int | None = None  # torch threads in the worker; None keeps torch's default
    plugins: list[str] = field(default_factory=list)  # extra plugin modules (--plugin), as for run

    def validate(self, host=None) -> None:
        """Raise BadInputError naming the flag when something cannot be measured."""
        if not self.variants:
            raise BadInputError("--attention: give at least one variant, e.g. multihead,sparse,lsh")
        if not self.lengths or any(n < 1 for n in self.lengths):
            raise BadInputError(f"--lengths: positive integers expected, got {self.lengths}")
        if self.device not in DEVICES:
            raise BadInputError(f"--device: {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise BadInputError(f"--dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        for name, value in (("--batch", self.batch), ("--heads", self.heads), ("--head-dim", self.head_dim)):
            if value < 1:
                raise BadInputError(f"{name}: must be a positive integer, got {value}")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise BadInputError("--device: cuda requested but torch sees no CUDA device; use --device cpu")
        if host is not None:
            for name in self.variants:
                if name not in BUILTIN_REFERENCES:
                    reg = host.attention.get(name)  # unknown names raise with the valid choices
                    reg.factory.parse_options(self.options.get(name), where=f"options.{name}")


@dataclass
class Measurement:
    """One (variant, length) point. ``ratio_to_sdpa`` is filled once the reference is known."""

    variant: str
    n: int
    ms: float
    peak_mib: float
    ratio_to_sdpa: float | None = None


@dataclass
class BenchResult:
    spec: BenchSpec
    measurements: list[Measurement]

    def of(self, variant: str) -> list[Measurement]:
        return sorted((m for m in self.measurements if m.variant == variant), key=lambda m: m.n)

    def variants(self) -> list[str]:
        return list(dict.fromkeys(m.variant for m in self.measurements))

    def growth_exponent(self, variant: str) -> float | None:
        """Slope of log(ms) against log(n) (numpy polyfit); None with fewer than two lengths."""
        points = self.of(variant)
        return growth_exponent([m.n for m in points], [m.ms for m in points])

    def fit_r2(self, variant: str) -> float | None:
        """How well a power law explains the variant's times (R² of the log-log line)."""
        points = self.of(variant)
        return fit_r2([m.n for m in points], [m.ms for m in points])

    def poor_fit(self, variant: str) -> bool:
        """True when the growth exponent should not be read (noisy or non-monotone timings)."""
        exp, r2 = self.growth_exponent(variant), self.fit_r2(variant)
        return exp is not None and (exp < 0 or (r2 is not None and r2 < POOR_FIT_R2))

    def rows(self) -> list[dict]:
        """One JSON-ready dict per (variant, length), as ``--json`` prints them."""
        fits = {v: {"growth_exponent": self.growth_exponent(v), "fit_r2": self.fit_r2(v),
                    "poor_fit": self.poor_fit(v)} for v in self.variants()}
        common = {k: getattr(self.spec, k) for k in ("device", "dtype", "batch", "heads", "head_dim")}
        return [asdict(m) | fits[m.variant] | common for m in self.measurements]


def growth_exponent(lengths: list[int], times: list[float]) -> float | None:
    import numpy as np

    if len(lengths) < 2:
        return None
    slope, _ = np.polyfit(np.log(lengths), np.log(times), 1)
    return float(slope)


def fit_r2(lengths: list[int], times: list[float]) -> float | None:
    """R² of the least-squares line through (log n, log time); None below three points
    (two points always fit exactly)."""
    import numpy as np

    if len(lengths) < 3:
        return None
    x, y = np.log(lengths), np.log(times)
    slope, intercept = np.polyfit(x, y, 1)
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return 1.0
    return 1.0 - float(((y - (slope * x + intercept)) ** 2).sum()) / total


# --- measuring one point (in a subprocess) --------------------------------------------------


def measure(variant: str, n: int, spec: BenchSpec, timeout: float = 1800) -> Measurement:
    """Measure one (variant, length) point in a fresh interpreter; errors come back as AttnbenchError."""
    job = {"variant": variant, "n": n, "spec": asdict(spec), "factory": resolve_factory(variant, spec)}
    # No fixed MALLOC_MMAP_THRESHOLD_ (peak memory comes from the profiler's allocation
    # events): timed under a 64 KiB threshold, every large tensor was a fresh mmap whose pages
    # the kernel zero-fills, which doubled the time of allocation-heavy variants. The worker
    # sees this interpreter's sys.path, so it can import what the host resolved here.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, "-m", "attnbench.bench", "--worker", json.dumps(job)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise AttnbenchError(f"bench worker for {variant} at n={n} failed:\n" + "\n".join(tail))
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(variant, n, data["ms"], data["peak_mib"])


def _build_step(variant: str, n: int, spec: BenchSpec, factory: str | None = None):
    """A zero-argument callable running one forward+backward of ``variant`` at length ``n``."""
    import torch
    import torch.nn.functional as F

    device, dtype = torch.device(spec.device), getattr(torch, spec.dtype)
    b, h, d = spec.batch, spec.heads, spec.head_dim
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_(grad)

    if variant in BUILTIN_REFERENCES:
        q, k, v = (rand(b, h, n, d) for _ in range(3))
        grad_out = rand(b, h, n, d, grad=False)  # a dense gradient: a broadcast one hits slow kernels

        def forward():
            if variant == REFERENCE:
                return F.scaled_dot_product_attention(q, k, v)
            return torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(d), dim=-1) @ v
    else:
        cls = _import_factory(factory)
        torch.manual_seed(0)
        module = cls(h * d, h, 0.0, options=cls.parse_options(spec.options.get(variant))).to(device, dtype)
        x = rand(b, n, h * d)
        grad_out = rand(b, n, h * d, grad=False)

        def forward():
            return module(x)[0]

    def step():
        forward().backward(grad_out)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def resolve_factory(variant: str, spec: BenchSpec) -> str | None:
    """``module:qualname`` of the class the plugin host registers under ``variant``.

    None for the built-in reference rows. Unknown names raise BadInputError with the valid
    choices; a class the worker could not import by name is also refused here.
    """
    if variant in BUILTIN_REFERENCES:
        return None
    from .plugin_host import get_host

    cls = get_host(spec.plugins).attention.get(variant).factory
    if "<locals>" in cls.__qualname__:
        raise BadInputError(f"--attention: {variant!r} ({cls.__qualname__}) is defined inside a function; "
                            "the bench worker can only import module-level classes")
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_factory(path: str):
    import importlib

    module_name, qualname = path.split(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def peak_allocated_bytes(step) -> int:
    """Peak of the bytes ``step()`` allocates on the CPU and has not freed yet, from the
    allocation events torch's profiler records (tensors only: torch's own allocator)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def _worker(job: dict) -> dict:
    import torch

    spec = BenchSpec(**job["spec"])
    if spec.threads:
        torch.set_num_threads(spec.threads)
    variant, n, factory = job["variant"], job["n"], job.get("factory")
    _build_step(variant, min(WARMUP_LENGTH, n), spec, factory)()  # load kernels and thread pools first
    step = _build_step(variant, n, spec, factory)
    if spec.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_allocated_bytes(step)
    best = math.inf
    for _ in range(spec.repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return {"ms": best * 1000, "peak_mib": peak / 2**20}


# --- a whole sweep ----------------------------------------------------------------------------


def run_bench(spec: BenchSpec, on_point=None) -> BenchResult:
    """Measure the reference and every variant at every length (reference first at each length).

    ``on_point(measurement)`` is called after each point (progress bars, streaming output).
    """
    variants = [REFERENCE] + [v for v in spec.variants if v != REFERENCE]
    measurements = []
    for n in spec.lengths:
        reference = None
        for variant in variants:
            m = measure(variant, n, spec)
            if variant == REFERENCE:
                reference = m.ms
            m.ratio_to_sdpa = m.ms / reference
            measurements.append(m)
            if on_point:
                on_point(m)
    return BenchResult(spec, measurements)


def plot_loglog(result: BenchResult, path: Path) -> Path:
    """Log-log PNG: time and peak memory against n, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for variant in result.variants():
        pts = result.of(variant)
        ns = [m.n for m in pts]
        exp = result.growth_exponent(variant)
        label = variant + (f" (n^{exp:.2f})" if exp is not None else "")
        ax_time.plot(ns, [m.ms for m in pts], marker="o", label=label)
        ax_mem.plot(ns, [max(m.peak_mib, 1e-3) for m in pts], marker="o", label=variant)
    s = result.spec
    for ax, ylabel in ((ax_time, "forward+backward time (ms)"), (ax_mem, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{s.device} {s.dtype}, B={s.batch} H={s.heads} D={s.head_dim}")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_to_mlflow(result: BenchResult, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
                  artifact_root_uri: str | None = None) -> dict[str, str]:
    """One MLflow run per variant: metrics stepped by n, the growth exponent, the log-log PNG.

    Artifacts go under ``artifact_root_uri`` (default: ``artifact_location`` of mlflow.yaml),
    like every other command's. Returns ``{variant: run_id}``.
    """
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    from .run.tracking import artifact_root, check_artifact_root_writable, check_writable, get_or_create_experiment

    root = artifact_root_uri or artifact_root()
    check_writable(tracking_uri)
    check_artifact_root_writable(root)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=get_or_create_experiment(MlflowClient(tracking_uri), experiment, root))
    s = result.spec
    run_ids = {}
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_loglog(result, Path(tmp) / "bench_loglog.png")
        for variant in result.variants():
            with mlflow.start_run(run_name=f"bench/{variant}") as run:
                mlflow.set_tags({Tag.ATTENTION: variant, Tag.KIND: "bench"})
                mlflow.log_params({
                    "variant": variant, "device": s.device, "dtype": s.dtype, "batch": s.batch,
                    "heads": s.heads, "head_dim": s.head_dim, "lengths": ",".join(map(str, s.lengths)),
                    "options": json.dumps(s.options.get(variant, {}), sort_keys=True),
                })
                for m in result.of(variant):
                    mlflow.log_metrics({"time_ms": m.ms, "peak_mib": m.peak_mib, "ratio_to_sdpa": m.ratio_to_sdpa}, step=m.n)
                exp = result.growth_exponent(variant)
                if exp is not None:
                    mlflow.log_metric("growth_exponent", exp)
                r2 = result.fit_r2(variant)
                if r2 is not None:
                    mlflow.log_metric("growth_fit_r2", r2)
                mlflow.log_artifact(str(png))
                run_ids[variant] = run.info.run_id
    return run_ids


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    print(json.dumps(_worker(json.loads(sys.argv[2]))))
