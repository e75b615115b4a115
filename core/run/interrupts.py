"""SIGINT, SIGTERM and SIGHUP all interrupt a grid the same way: the runs in flight and the
parent run end KILLED, and the command exits 128 + the signal number (130, 143, 129).

Schedulers, ``timeout`` and Kubernetes send SIGTERM; a closed terminal or SSH session sends
SIGHUP; Ctrl-C sends SIGINT. Each raises :class:`Interrupted` (a KeyboardInterrupt) once; later
signals are ignored while the runs are being closed, so cleanup is not itself interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REDELIVER_AFTER_S = 0.1


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


_closing = False  # set once an exit path starts closing runs: no signal may cut it short


def closing() -> None:
    """From now on (in this process) signals neither raise nor are re-sent: runs are being closed."""
    global _closing
    _closing = True


def install() -> None:
    """Make the handled signals raise :class:`Interrupted` in the main thread (once)."""
    fired = []

    def handler(signum, frame):
        if fired or _closing:
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous_hook = sys.unraisablehook

    def redeliver(info) -> None:
        # A signal that lands while a weakref or GC callback runs (an import's module lock, say)
        # raises there, and Python only prints what such a callback raises: the interrupt would
        # be lost and a traceback shown. Send the signal again a moment later, from a timer
        # thread: sent at once it would be handled inside this hook and swallowed again.
        if isinstance(info.exc_value, Interrupted) and fired:
            fired.clear()
            resend = threading.Timer(REDELIVER_AFTER_S, _resend, args=(info.exc_value.signum,))
            resend.daemon = True
            resend.start()
            return
        previous_hook(info)

    sys.unraisablehook = redeliver
    for signum in HANDLED:
        signal.signal(signum, handler)


def _resend(signum: int) -> None:
    if not _closing:
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def interrupts_raise():
    """``install()`` for the duration of the block, restoring the previous handlers after it."""
    global _closing
    previous, previous_hook = {signum: signal.getsignal(signum) for signum in HANDLED}, sys.unraisablehook
    install()
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        sys.unraisablehook = previous_hook
        _closing = False
