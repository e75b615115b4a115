"""Where a pairing's wall time goes: named phases (data, tokenizer, train, eval, pictures, tracking).

The runner makes a :class:`PhaseClock` current for each pairing; code anywhere below it marks
its work with ``with attnbench.phase("tokenizer"): ...``. Phases nest and time is exclusive:
a tracking write inside training counts as tracking, not training, so the phases add up to
the pairing's wall time. Outside a pairing (tests, benchmarks) ``phase`` costs one lookup.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Iterator

# The phases the runner and the core helpers mark; a plugin may add its own names.
DATA, TOKENIZER, TRAIN, EVAL, PICTURES, TRACKING, OTHER = (
    "data", "tokenizer", "train", "eval", "pictures", "tracking", "other")

_current: ContextVar["PhaseClock | None"] = ContextVar("attnbench_phase_clock", default=None)


class PhaseClock:
    """Exclusive seconds per phase name; time outside any phase is ``other``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = [OTHER]
        self._since = time.perf_counter()

    def _switch(self) -> None:
        now = time.perf_counter()
        top = self._stack[-1]
        self.seconds[top] = self.seconds.get(top, 0.0) + now - self._since
        self._since = now

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._switch()
        self._stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self._stack.pop()

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (the running phase included)."""
        self._switch()
        return dict(self.seconds)

    @contextlib.contextmanager
    def current(self) -> Iterator["PhaseClock"]:
        """Make this the clock that :func:`phase` reports to, in this thread/context."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the enclosed work as phase ``name`` of the current pairing (no-op outside one)."""
    clock = _current.get()
    if clock is None:
        yield
        return
    with clock.phase(name):
        yield


class TimedCalls:
    """Wraps an object (the MLflow client) so that every method call counts as ``phase_name``."""

    def __init__(self, target, phase_name: str):
        self._target, self._phase_name = target, phase_name

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def timed(*args, **kwargs):
            with phase(self._phase_name):
                return value(*args, **kwargs)

        return timed
