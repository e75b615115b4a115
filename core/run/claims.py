"""Claims on pairings, with leases and heartbeats, kept in the tracking store itself (any MLflow
backend: SQLite, PostgreSQL behind ``mlflow server``, ...).

A claim is the pairing's child run while it is RUNNING: it carries the run_key, its owner
(host:pid) and a heartbeat tag its process refreshes every ``heartbeat_s``. A RUNNING run whose
heartbeat is older than the lease is *stale*: its process died (kill -9, a lost node). The next
claimer closes it FAILED with ``closed_because: lost heartbeat``, and trains the pairing again.

Two claimers racing for one pairing both create a run (``claim: pending``), wait ``settle_s``
and look again. The rule that picks the winner is the same for everyone: a run already holding
its claim wins; otherwise the earliest (start time, run id). The loser marks its run ``lost to
<winner>``, ends it KILLED and deletes it, and trains nothing. Only another invocation of the
grid can race: a claimer that sees no RUNNING parent run but its own decides at once
(:func:`rivals_running`; why that is safe: docs/scale.md, "Claims").
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field

from . import record
from .record import Tag

RUNNING = "RUNNING"


def owner_id() -> str:
    """Who holds a claim: ``host:pid`` (enough to find the process on a cluster)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def last_seen(run) -> float:
    """Unix seconds of the run's last sign of life: its heartbeat, or its start."""
    beat = run.data.tags.get(Tag.HEARTBEAT, "")
    try:
        beat_s = float(beat)
    except ValueError:
        beat_s = 0.0
    return max(beat_s, (run.info.start_time or 0) / 1000.0)


def is_stale(run, lease_s: float, now: float | None = None) -> bool:
    return run.info.status == RUNNING and (now or time.time()) - last_seen(run) > lease_s


def is_live(run, lease_s: float, now: float | None = None) -> bool:
    return run.info.status == RUNNING and not is_stale(run, lease_s, now)


def holder_text(run) -> str:
    return f"{run.data.tags.get(Tag.OWNER, 'an unknown process')} (run {run.info.run_id[:8]})"


@dataclass
class PairingState:
    """What the store says about one pairing (one run_key)."""

    finished: object | None = None  # a FINISHED run: nothing to do
    live: list = field(default_factory=list)  # RUNNING with a fresh heartbeat: claimed
    stale: list = field(default_factory=list)  # RUNNING with an old heartbeat: a dead worker's


def pairing_state(client, experiment_id: str, run_key: str, lease_s: float) -> PairingState:
    runs = client.search_runs([experiment_id], filter_string=record.run_key_filter(run_key), max_results=1000)
    state, now = PairingState(), time.time()
    for run in runs:
        if run.info.status == "FINISHED" and state.finished is None:
            state.finished = run
        elif run.info.status == RUNNING:
            (state.stale if is_stale(run, lease_s, now) else state.live).append(run)
    return state


def close_stale(client, runs, lease_s: float) -> list[str]:
    """Mark stale runs FAILED (``lost heartbeat``) and close their parents when those are stale too
    (a parent whose invocation is still alive keeps running). Returns one line per closed run."""
    lines, done, now = [], set(), time.time()
    for run in runs:
        if run.info.run_id in done:
            continue
        lines.append(_close(client, run, now))
        done.add(run.info.run_id)
        parent_id = run.data.tags.get(record.PARENT_RUN_ID)
        if parent_id and parent_id not in done:
            parent = client.get_run(parent_id)
            if is_stale(parent, lease_s, now):
                lines.append(_close(client, parent, now))
                done.add(parent_id)
    return lines


def _close(client, run, now: float) -> str:
    ago = now - last_seen(run)
    why = f"{record.LOST_HEARTBEAT}: last seen {ago:.0f} s ago, held by {run.data.tags.get(Tag.OWNER, '?')}"
    client.set_tag(run.info.run_id, Tag.CLOSED_BECAUSE, record.LOST_HEARTBEAT)
    client.set_tag(run.info.run_id, Tag.ERROR, why)
    client.set_terminated(run.info.run_id, "FAILED")
    return f"closed stale run {run.info.run_name} ({run.info.run_id[:8]}) FAILED: {why}"


def find_stale(client, experiment_ids: list[str], lease_s: float) -> list:
    """Every stale RUNNING attnbench run (parents and children) in these experiments."""
    runs = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=50000)
    now = time.time()
    return [r for r in runs if Tag.ROLE in r.data.tags and is_stale(r, lease_s, now)]


@dataclass
class ClaimResult:
    run_id: str | None  # ours when we won
    winner: object | None = None  # the run that holds or finished the pairing when we lost
    finished: bool = False  # lost because the pairing FINISHED meanwhile

    @property
    def won(self) -> bool:
        return self.run_id is not None


def rivals_running(client, experiment_id: str, parent_id: str) -> bool:
    """Whether an invocation other than ``parent_id``'s has a RUNNING parent run in the experiment.

    Any RUNNING one counts, however old its heartbeat: a wrong "yes" costs one ``settle_s``."""
    parents = client.search_runs([experiment_id], filter_string=f"attributes.status = '{RUNNING}' and {record.PARENT_FILTER}",
                                 max_results=10)
    return any(run.info.run_id != parent_id for run in parents)


def claim(client, experiment_id: str, run_name: str, tags: dict[str, str], run_key: str, *,
          lease_s: float, settle_s: float, parent_id: str | None = None) -> ClaimResult:
    """Create this pairing's run as a pending claim, wait, and keep it only if it wins the race.

    ``parent_id``: the claiming invocation's parent run; with it, the wait is skipped while no
    other invocation runs (nobody to race), which saves ``settle_s`` per pairing for a lone grid."""
    now = time.time()
    tags = tags | {Tag.CLAIM: record.CLAIM_PENDING, Tag.OWNER: owner_id(), Tag.HEARTBEAT: f"{now:.3f}"}
    mine = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    if settle_s and (parent_id is None or rivals_running(client, experiment_id, parent_id)):
        time.sleep(settle_s)
    state = pairing_state(client, experiment_id, run_key, lease_s)
    winner = state.finished or _winner(state.live, mine)
    if winner is None or winner.info.run_id == mine:
        client.set_tag(mine, Tag.CLAIM, record.CLAIM_HELD)
        return ClaimResult(mine)
    client.set_tag(mine, Tag.CLAIM, record.claim_lost_to(winner.info.run_id))
    client.set_terminated(mine, "KILLED")
    client.delete_run(mine)  # a lost claim never shows up in the UI or in compare
    return ClaimResult(None, winner, finished=state.finished is not None)


def _winner(live: list, mine: str):
    """The deterministic rule: a claim already held (training) wins; else the earliest one."""
    if not live:
        return None
    held = [r for r in live
            if r.info.run_id != mine and r.data.tags.get(Tag.CLAIM, record.CLAIM_HELD) == record.CLAIM_HELD]
    if held:
        return held[0]
    pending = [r for r in live if r.data.tags.get(Tag.CLAIM) == record.CLAIM_PENDING]
    return min(pending or live, key=lambda r: (r.info.start_time or 0, r.info.run_id))


class Heartbeat:
    """A daemon thread that refreshes the heartbeat tag of the runs this process holds."""

    def __init__(self, tracking_uri: str, every_s: float):
        self.tracking_uri, self.every_s = tracking_uri, every_s
        self._runs: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # beats that could not be written (the store was busy or away)

    def add(self, run_id: str) -> None:
        with self._lock:
            self._runs.add(run_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="attnbench-heartbeat", daemon=True)
            self._thread.start()

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._runs.discard(run_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)  # its own client: the owner's may be mid-call
        while not self._stop.wait(self.every_s):
            with self._lock:
                runs = sorted(self._runs)
            for run_id in runs:
                try:
                    client.set_tag(run_id, Tag.HEARTBEAT, f"{time.time():.3f}")
                except Exception:  # a missed beat is retried next time; the lease allows several
                    self.failures += 1
