"""A pairing's seconds per phase as ``perf/phase/*`` metrics, and the short line the runner prints.

The phases come from the :class:`attnbench.phases.PhaseClock` that was current while the
pairing ran (see core/phases.py for what each phase covers).
"""

from __future__ import annotations

from ..phases import DATA, EVAL, OTHER, PICTURES, TOKENIZER, TRACKING, TRAIN, PhaseClock
from . import record

ORDER = (DATA, TOKENIZER, TRAIN, EVAL, PICTURES, TRACKING, OTHER)  # the flow of a pairing


def phase_metrics(clock: PhaseClock) -> dict[str, float]:
    """``perf/phase/<phase>_s`` for every phase that took time, plus ``perf/pairing_s`` (their sum)."""
    totals = clock.totals()
    metrics = {record.phase_metric(name): seconds for name, seconds in totals.items()}
    metrics[record.PERF["pairing_s"]] = sum(totals.values())
    return metrics


def phase_line(metrics: dict[str, float]) -> str:
    """``data 0.4 · train 31 · eval 5.2 · pictures 1.9 · tracking 0.3 s`` from a run's metrics."""
    found = {phase: v for k, v in metrics.items() if (phase := record.phase_of(k)) is not None}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    parts = [f"{name} {_short(found[name])}" for name in names if found[name] >= 0.05]
    return " · ".join(parts) + " s" if parts else ""


def _short(seconds: float) -> str:
    return f"{seconds:.2g}" if seconds < 10 else f"{seconds:.0f}"
