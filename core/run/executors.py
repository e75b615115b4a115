"""Where pairings run. An executor only decides that; the unit of work (claim, then train) is
:class:`~attnbench.run.worker.Worker`'s, the same everywhere.

- :class:`InProcessExecutor`: one pairing at a time in this process (``--workers 1``).
- :class:`LocalPoolExecutor`: N spawned worker processes on this machine.
- :class:`RayExecutor`: each pairing a Ray task with ``num_cpus`` (and ``num_gpus: 1`` on CUDA),
  on a local ``ray.init()`` or an existing cluster.

Every executor reports through ``on_event(index, kind, value)`` called in the invoking
process's main thread: ``run`` (run id), ``total``, ``step``, ``phase``, ``note`` and ``done``
(a :class:`UnitResult`).
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import sys
import time
from collections import deque
from typing import Callable

from ..errors import BadInputError
from .worker import GridJob, UnitResult, Worker, worker_for

OnEvent = Callable[[int, str, object], None]
STOP_GRACE_S = 15.0  # how long interrupted workers get to mark their runs KILLED
STEP_EVENTS_EVERY_S = 0.5  # step events from other processes are thinned to this rate


class InProcessExecutor:
    slots = 1

    def __init__(self, worker: Worker, on_event: OnEvent):
        self.worker, self.on_event = worker, on_event
        self.queue: deque[int] = deque()

    def submit(self, index: int) -> None:
        self.queue.append(index)

    def poll(self, timeout: float) -> None:
        if not self.queue:
            time.sleep(timeout)
            return
        index = self.queue.popleft()
        result = self.worker.run(index, lambda kind, value: self.on_event(index, kind, value))
        self.on_event(index, "done", result)

    def stop(self, interrupted: bool = False) -> None:
        self.queue.clear()


def _thinned(report, every_s: float = STEP_EVENTS_EVERY_S):
    """Pass every event through except ``step`` events closer together than ``every_s``."""
    last = [0.0]

    def send(kind, value):
        if kind == "step":
            now = time.monotonic()
            if now - last[0] < every_s:
                return
            last[0] = now
        report(kind, value)

    return send


def _run_unit(job: GridJob, index: int, report) -> UnitResult:
    """A unit in a worker process or Ray task; anything but an interrupt becomes a FAILED result."""
    try:
        return worker_for(job).run(index, _thinned(report))
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return UnitResult(index, "FAILED", error=f"worker {socket.gethostname()}:{os.getpid()}: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- local worker processes


def _pool_main(job: GridJob, tasks, events, parent: int) -> None:
    """A local worker process: take pairing indices until told to stop (None) or orphaned.

    ``parent``: the invoking process's pid, passed in so that a parent already gone by the
    time this process runs is noticed too."""
    from .interrupts import install

    install()  # SIGTERM from the invoking process (or Ctrl-C on the terminal) ends the pairing KILLED
    _die_with(parent)
    if os.getppid() != parent:  # it died before the kernel was asked to tell us
        return
    index = None
    try:
        while True:
            try:
                index = tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # the invoking process died (kill -9): nobody to report to
                    return
                continue
            if index is None:
                _leave(events)
            events.put((index, "pid", os.getpid()))
            result = _run_unit(job, index, lambda kind, value, i=index: events.put((i, kind, value)))
            events.put((index, "done", result))
            index = None
    except KeyboardInterrupt:
        if os.getppid() != parent:  # the parent died: its pipe has no reader, report nothing
            events.cancel_join_thread()
        elif index is not None:
            events.put((index, "done", UnitResult(index, "KILLED")))


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """On Linux, have the kernel send this worker SIGTERM when the invoking process dies
    (kill -9, the OOM killer): the pairing in flight then ends KILLED at once, like on any
    other stop, instead of training on unseen until it finishes. Elsewhere the worker still
    notices between pairings (its parent pid changes) and leaves."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl in this libc: keep the between-pairings check
        pass


def _leave(events) -> None:
    """End a worker process that has nothing left to do, skipping the interpreter's teardown:
    with torch and MLflow loaded that takes 1-1.5 s, which the invoking process would spend
    waiting before it prints the results. Everything the worker reported is flushed first."""
    events.close()
    events.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class LocalPoolExecutor:
    def __init__(self, job: GridJob, on_event: OnEvent, workers: int):
        import multiprocessing

        # spawn, not fork: a forked copy of a process holding torch threads and open DB
        # connections is not safe to use.
        context = multiprocessing.get_context("spawn")
        self.on_event, self.slots = on_event, workers
        self.tasks, self.events = context.Queue(), context.Queue()
        self.processes = [context.Process(target=_pool_main, args=(job, self.tasks, self.events, os.getpid()),
                                          name=f"attnbench-worker-{i}", daemon=True) for i in range(workers)]
        for process in self.processes:
            process.start()
        self.working: dict[int, int] = {}  # pid -> index it is on
        self.queued: set[int] = set()  # submitted and not done, taken by a worker or not

    def submit(self, index: int) -> None:
        self.queued.add(index)
        self.tasks.put(index)

    def poll(self, timeout: float) -> None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            self._check_dead()
            return
        while True:
            self._handle(*event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break

    def _handle(self, index: int, kind: str, value) -> None:
        if kind == "pid":
            self.working[value] = index
            return
        if kind == "done":
            self.working = {pid: i for pid, i in self.working.items() if i != index}
            self.queued.discard(index)
        self.on_event(index, kind, value)

    def _check_dead(self) -> None:
        """A worker killed from outside (OOM killer, kill -9): its pairing fails, the grid goes on.
        With every worker gone, nothing would take the pairings still queued: they fail too."""
        for process in self.processes:
            if process.exitcode is not None and process.pid in self.working:
                index = self.working.pop(process.pid)
                self._lost(index, f"worker process {process.pid} died (exit code {process.exitcode})")
        if self.queued and all(process.exitcode is not None for process in self.processes):
            codes = ", ".join(str(process.exitcode) for process in self.processes)
            for index in sorted(self.queued):
                self._lost(index, f"every worker process has exited (exit codes {codes}) with this pairing queued")

    def _lost(self, index: int, error: str) -> None:
        """Fail a pairing whose worker is gone; its run, if it had one, is still RUNNING (the runner closes it)."""
        self.queued.discard(index)
        self.on_event(index, "done", UnitResult(index, "FAILED", error=error))

    def stop(self, interrupted: bool = False) -> None:
        if interrupted:
            for process in self.processes:
                if process.is_alive():
                    _signal(process.pid, signal.SIGTERM)
        else:
            for _ in self.processes:
                self.tasks.put(None)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for q in (self.tasks, self.events):
            q.cancel_join_thread()
            q.close()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- Ray

RAY_HINT = 'install it with: pip install "attnbench[ray]"'
RAY_CONNECT_TIMEOUT_S = 10.0


def check_ray(address: str | None) -> None:
    """Fail fast (exit 2) when Ray is missing or ``address`` does not answer."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BadInputError(f"--executor ray needs Ray, which is not installed; {RAY_HINT}") from None
    if address and address != "auto":
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=RAY_CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise BadInputError(f"--ray-address {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
                                "start the cluster with `ray start --head` (docs/scale.md) or leave --ray-address "
                                "out for a local Ray") from None


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(f"--ray-address {address!r}: expected host:port or ray://host:port (e.g. 10.0.0.5:6379)")
    return host, int(port)


def _ray_unit(job: GridJob, index: int, events) -> UnitResult:
    """The Ray task: one pairing, events through a Ray queue."""
    from .interrupts import install

    install()
    return _run_unit(job, index, lambda kind, value: events.put((index, kind, value)))


class RayExecutor:
    def __init__(self, job: GridJob, on_event: OnEvent, workers: int, address: str | None, use_gpu: bool):
        import ray
        from ray.util.queue import Queue

        self.ray, self.on_event, self.slots = ray, on_event, workers
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **({} if address else {"num_cpus": os.cpu_count()}))
        self.events = Queue()
        options = {"num_cpus": job.threads or 1, "num_gpus": 1 if use_gpu else 0, "max_retries": 0}
        self.remote = ray.remote(_ray_unit).options(**options)
        self.job = job
        self.refs: dict = {}

    def submit(self, index: int) -> None:
        self.refs[self.remote.remote(self.job, index, self.events)] = index

    def poll(self, timeout: float) -> None:
        ready = []
        if self.refs:
            ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        else:
            time.sleep(timeout)
        for index, kind, value in self.events.get_nowait_batch(self.events.qsize()):
            self.on_event(index, kind, value)
        for ref in ready:
            index = self.refs.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as exc:  # the task's process died or Ray lost it: its run is still RUNNING (the runner closes it)
                result = UnitResult(index, "FAILED", error=f"Ray task failed: {type(exc).__name__}: {str(exc)[:300]}")
            self.on_event(index, "done", result)

    def stop(self, interrupted: bool = False) -> None:
        if interrupted:
            for ref in self.refs:
                self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started_ray:
            self.ray.shutdown()
