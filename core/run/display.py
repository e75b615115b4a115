"""Grid progress on the console: live bars on a terminal, plain lines everywhere else.

On a terminal: one bar for the grid and one for every pairing in flight. Piped or logged
(``attnbench run | tee log``, CI): one line when a pairing starts, a progress line per pairing
at most every ``LINE_EVERY_S`` seconds, its phases, and the result line the runner prints.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINE_EVERY_S = 15.0


def make_display(console: Console, total: int):
    return BarDisplay(console, total) if console.is_terminal else LineDisplay(console, total)


class BarDisplay:
    def __init__(self, console: Console, total: int):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 # 4 redraws a second, not rich's 10: each redraw holds the GIL ~2 ms,
                                 # time a 1-thread training loop would lose (benchmarks/bench_overhead.py)
                                 console=console, refresh_per_second=4)
        self.grid = self.progress.add_task("grid", total=total, info="")
        self.bars: dict[int, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def start(self, index: int, name: str) -> None:
        self.bars[index] = self.progress.add_task(name, total=None, info="waiting for a worker")

    def update(self, index: int, kind: str, value) -> None:
        bar = self.bars.get(index)
        if bar is None:
            return
        if kind == "total":
            self.progress.update(bar, total=value, info="")
        elif kind == "step":
            step, loss = value
            self.progress.update(bar, completed=step, info=f"loss {loss:.3f}")
        elif kind == "phase":
            self.progress.update(bar, info=str(value))
        elif kind == "run":
            self.progress.update(bar, info=f"run {str(value)[:8]}")

    def drop(self, index: int) -> None:
        bar = self.bars.pop(index, None)
        if bar is not None:
            self.progress.remove_task(bar)

    def advance(self) -> None:
        self.progress.advance(self.grid)


class LineDisplay:
    def __init__(self, console: Console, total: int):
        self.console, self.total = console, total
        self.names: dict[int, str] = {}
        self.totals: dict[int, int] = {}
        self.last_line: dict[int, float] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def start(self, index: int, name: str) -> None:
        self.names[index] = name
        self.last_line[index] = time.monotonic()

    def update(self, index: int, kind: str, value) -> None:
        name = self.names.get(index)
        if name is None:
            return
        if kind == "run":
            self._line(f"start {name} (run {str(value)[:8]})")
        elif kind == "total":
            self.totals[index] = int(value)
        elif kind == "phase" and str(value).startswith("evaluating test"):
            self._line(f"{name}: {value}")
        elif kind == "step":
            now = time.monotonic()
            if now - self.last_line.get(index, 0.0) >= LINE_EVERY_S:
                step, loss = value
                total = self.totals.get(index)
                self._line(f"{name}: step {step}" + (f"/{total}" if total else "") + f", loss {loss:.3f}")
                self.last_line[index] = now

    def drop(self, index: int) -> None:
        self.names.pop(index, None)

    def advance(self) -> None:
        pass  # the runner prints a line per finished pairing
