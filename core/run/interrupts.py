"""SIGINT, SIGTERM and SIGHUP all interrupt a grid the same way: the runs in flight and the
parent run end KILLED, and the command exits 128 + the signal number (130, 143, 129).

Schedulers, ``timeout`` and Kubernetes send SIGTERM; a closed terminal or SSH session sends
SIGHUP; Ctrl-C sends SIGINT. Each raises :class:`Interrupted` (a KeyboardInterrupt) once; later
signals are ignored while the runs are being closed, so cleanup is not itself interrupted.
"""

from __future__ import annotations

import contextlib
import signal

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_of(exc: KeyboardInterrupt) -> int:
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def install() -> None:
    """Make the handled signals raise :class:`Interrupted` in the main thread (once)."""
    fired = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    for signum in HANDLED:
        signal.signal(signum, handler)


@contextlib.contextmanager
def interrupts_raise():
    """``install()`` for the duration of the block, restoring the previous handlers after it."""
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    install()
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
