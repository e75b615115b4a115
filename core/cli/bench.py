"""``attnbench bench``: time and memory of attention variants against sequence length.

A plain function with typer annotations; ``attnbench.cli.app`` registers it as a command.
"""

from __future__ import annotations

import json
from typing import Annotated, List, Optional

import typer

from ..bench import DEFAULT_EXPERIMENT, POOR_FIT_R2, REFERENCE, BenchResult, BenchSpec, log_to_mlflow, run_bench
from ..errors import BadInputError
from .common import PLUGIN_OPTION, user_errors


def _int_list(raw: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise BadInputError(f"{flag}: comma-separated positive integers expected, got {raw!r}") from None
    if not values or min(values) < 1:
        raise BadInputError(f"{flag}: comma-separated positive integers expected, got {raw!r}")
    return values


def _tracking_uri(flag: str | None) -> str:
    from ..run.tracking import resolve_tracking_uri

    return resolve_tracking_uri(flag)


def bench(
    attention: Annotated[str, typer.Option(help="Comma-separated attention variants; 'sdpa' is always measured as the reference.")] = "multihead,sparse,lsh",
    lengths: Annotated[str, typer.Option(help="Comma-separated sequence lengths.")] = "512,1024,2048,4096,8192",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    batch: Annotated[int, typer.Option(help="Batch size B.")] = 1,
    heads: Annotated[int, typer.Option(help="Attention heads H (d_model = H * head_dim).")] = 8,
    head_dim: Annotated[int, typer.Option(help="Width of one head D.")] = 64,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object per (variant, length) instead of a table.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, then mlflow.yaml).")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment for the runs (one run per variant).")] = DEFAULT_EXPERIMENT,
    plugin: Optional[List[str]] = PLUGIN_OPTION,
) -> None:
    """Time forward+backward and measure peak memory per variant and length, against dense SDPA."""
    with user_errors():
        _bench(attention, lengths, device, dtype, batch, heads, head_dim, json_output, tracking_uri, experiment, plugin)


def _bench(attention, lengths, device, dtype, batch, heads, head_dim, json_output, tracking_uri, experiment,
           plugin=None) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..plugin_host import get_host
    from ..run.tracking import artifact_root, check_artifact_root_writable, check_writable, load_tracking_config

    spec = BenchSpec(
        variants=[v.strip() for v in attention.split(",") if v.strip()],
        lengths=_int_list(lengths, "--lengths"),
        device=device, dtype=dtype, batch=batch, heads=heads, head_dim=head_dim, plugins=list(plugin or []),
    )
    spec.validate(get_host(spec.plugins))
    uri = _tracking_uri(tracking_uri)
    root = artifact_root(load_tracking_config())
    check_writable(uri)  # before measuring for minutes, not after
    check_artifact_root_writable(root)
    total = len(spec.lengths) * len({REFERENCE, *spec.variants})
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=json_output) as progress:
        task = progress.add_task("bench", total=total)

        def on_point(m):
            progress.update(task, advance=1, description=f"{m.variant} n={m.n}: {m.ms:.1f} ms")

        result = run_bench(spec, on_point=on_point)
    run_ids = log_to_mlflow(result, uri, experiment, root)
    if json_output:
        for row in result.rows():
            typer.echo(json.dumps(row))
        return
    print_table(result, Console())
    err.print(f"logged {len(run_ids)} runs to experiment {experiment!r} at {uri}")


def print_table(result: BenchResult, console) -> None:
    """Rich table: ms, ratio to SDPA and peak MiB per (variant, n), then growth exponents."""
    from rich.table import Table

    s = result.spec
    table = Table(title=f"attnbench bench: {s.device} {s.dtype}, B={s.batch} H={s.heads} D={s.head_dim}, forward+backward")
    for col in ("variant", "n", "ms", "x SDPA", "peak MiB"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for variant in result.variants():
        for m in result.of(variant):
            table.add_row(variant, str(m.n), f"{m.ms:.1f}", f"{m.ratio_to_sdpa:.2f}", f"{m.peak_mib:.1f}")
    console.print(table)
    growth = Table(title="growth exponent (slope of log time vs log n)")
    growth.add_column("variant")
    growth.add_column("exponent", justify="right")
    growth.add_column("fit R²", justify="right")
    for variant in result.variants():
        exp, r2 = result.growth_exponent(variant), result.fit_r2(variant)
        flag = " [yellow]poor fit[/yellow]" if result.poor_fit(variant) else ""
        growth.add_row(variant, "-" if exp is None else f"{exp:.2f}{flag}", "-" if r2 is None else f"{r2:.2f}")
    console.print(growth)
    poor = [v for v in result.variants() if result.poor_fit(v)]
    if poor:
        console.print(f"[yellow]warning: the timings of {', '.join(poor)} do not follow a power law (negative "
                      f"exponent or R² < {POOR_FIT_R2}): too noisy to read a growth exponent; use longer or more "
                      "--lengths, or a quieter machine[/yellow]")
