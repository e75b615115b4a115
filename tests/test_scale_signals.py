"""Every exit path of a real ``attnbench run`` process closes what it opened: SIGTERM and SIGHUP
mid-run, SIGINT after the last pairing, an exception inside the runner, kill -9 (the next run
closes the ghost), and Ctrl-C on ``attnbench run | tee log``. Each test then reads the store:
no run is left RUNNING and no pairing FINISHED twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from attnbench.run import record
from attnbench.run.record import Tag

from conftest import write_grid
from test_runner import GRID

TESTS = Path(__file__).resolve().parent

# 4 pairings of about 3 s each (6 steps, 0.5 s asleep per step), whatever the machine's load.
SLOW_GRID = (GRID.replace("seed: [0]\n", "seed: [0, 1]\n")
             .replace("save_checkpoint: false}", "save_checkpoint: false, threads: 1}")
             .replace("toy: {n_train: 48}", "toy: {n_train: 48, slow_s: 0.5}"))
assert "slow_s" in SLOW_GRID and "seed: [0, 1]" in SLOW_GRID and "threads: 1" in SLOW_GRID


class Attnbench:
    """``attnbench run`` in a process (and session) of its own, its output collected as it comes."""

    def __init__(self, workdir: Path, uri: str, *args: str, patch: str = "", shell_suffix: str = ""):
        code = patch + "\nfrom attnbench.cli import main\nmain()\n"
        argv = [sys.executable, "-c", code, "run", "g.yaml", "--tracking-uri", uri,
                "--plugin", "attnbench_test_plugins", *args]
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                            "COLUMNS": "200"}
        if shell_suffix:  # e.g. "| tee log": the pipeline runs under bash, in one process group
            argv = ["bash", "-c", "set -o pipefail; " + subprocess.list2cmdline(argv) + " 2>&1 " + shell_suffix]
        self.proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.output, re.M)) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"never saw {pattern!r} x{count}; exit {self.proc.poll()}:\n{self.output}")
            time.sleep(0.1)

    def send(self, signum: int, group: bool = False) -> None:
        os.killpg(self.proc.pid, signum) if group else os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


@pytest.fixture
def slow_grid(workdir):
    write_grid(workdir / "g.yaml", SLOW_GRID)
    return workdir


def store(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("toygrid")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(Tag.ROLE) == record.ROLE_PARENT]
    children = [r for r in runs if r.data.tags.get(Tag.ROLE) == record.ROLE_CHILD]
    return client, parents, children


def assert_clean(uri: str) -> tuple[list, list]:
    """Nothing left RUNNING; no pairing FINISHED twice."""
    _, parents, children = store(uri)
    running = [r.info.run_name for r in parents + children if r.info.status == "RUNNING"]
    assert not running, f"left RUNNING: {running}"
    twice = [k for k, n in Counter(r.data.tags[Tag.RUN_KEY] for r in children if r.info.status == "FINISHED").items() if n > 1]
    assert not twice, f"FINISHED twice: {twice}"
    return parents, children


def test_sigterm_mid_run_with_two_workers_kills_the_runs_in_flight_and_the_parent(slow_grid, tracking_uri):
    run = Attnbench(slow_grid, tracking_uri, "--workers", "2")
    run.wait_for(r"^start toy/", count=2)  # both workers busy
    run.send(signal.SIGTERM)
    assert run.wait() == 143, run.output
    assert "interrupted (SIGTERM)" in run.output and "Traceback" not in run.output
    parents, children = assert_clean(tracking_uri)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert "KILLED" in {c.info.status for c in children}


def test_sighup_mid_run_behaves_like_ctrl_c(slow_grid, tracking_uri):
    run = Attnbench(slow_grid, tracking_uri)
    run.wait_for(r"^start toy/")
    run.send(signal.SIGHUP)
    assert run.wait() == 129, run.output
    parents, children = assert_clean(tracking_uri)
    assert [p.info.status for p in parents] == ["KILLED"] and [c.info.status for c in children] == ["KILLED"]


SLOW_SUMMARY = """
import time
import attnbench.compare.report as report
def slow_summary(*args, **kwargs):
    print("SUMMARIZING", flush=True)
    time.sleep(60)
report.summarize_grid_to_parent = slow_summary
"""


def test_sigint_after_the_last_pairing_closes_the_parent(slow_grid, tracking_uri):
    run = Attnbench(slow_grid, tracking_uri, "--set", "grid.seed=[0]", "--set", "tasks.toy.slow_s=0", patch=SLOW_SUMMARY)
    run.wait_for("^SUMMARIZING")  # every pairing is done; the grid summary is being written
    run.send(signal.SIGINT)
    assert run.wait() == 130, run.output
    parents, children = assert_clean(tracking_uri)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]


BOOM_IN_RUNNER = """
from attnbench.run.runner import GridRunner
def boom(self, outcome, done):
    raise RuntimeError("boom in the runner")
GridRunner._report = boom
"""


def test_an_exception_inside_the_runner_closes_the_parent_failed_and_the_runs_in_flight(slow_grid, tracking_uri):
    # the first pairing to end raises in the invoking process while the other worker is mid-pairing
    run = Attnbench(slow_grid, tracking_uri, "--workers", "2", "--set", "grid.seed=[0]", patch=BOOM_IN_RUNNER)
    assert run.wait(timeout=300) == 1, run.output
    assert "boom in the runner" in run.output
    parents, children = assert_clean(tracking_uri)
    assert [p.info.status for p in parents] == ["FAILED"]
    assert "RuntimeError: boom in the runner" in parents[0].data.tags[Tag.ERROR]


def test_kill_9_leaves_a_ghost_that_the_next_run_closes_and_retrains(slow_grid, tracking_uri):
    run = Attnbench(slow_grid, tracking_uri, "--set", "grid.seed=[0]", "--lease", "4")
    run.wait_for(r"^start toy/")
    run.send(signal.SIGKILL)
    run.wait()
    _, parents, children = store(tracking_uri)
    ghost = next(c for c in children if c.info.status == "RUNNING")
    time.sleep(5)  # past the lease: the ghost's heartbeat is stale
    again = Attnbench(slow_grid, tracking_uri, "--set", "grid.seed=[0]", "--lease", "4")
    assert again.wait(timeout=300) == 0, again.output
    assert f"closed stale run {ghost.info.run_name} ({ghost.info.run_id[:8]}) FAILED: lost heartbeat" in again.output
    client, _, _ = store(tracking_uri)
    closed = client.get_run(ghost.info.run_id)
    assert closed.info.status == "FAILED" and closed.data.tags[Tag.CLOSED_BECAUSE] == "lost heartbeat"
    assert client.get_run(parents[0].info.run_id).info.status == "FAILED"  # its parent was a ghost too
    _, children = assert_clean(tracking_uri)
    assert sorted(c.info.run_name for c in children if c.info.status == "FINISHED") == [
        "toy/gru/s0", "toy/multihead/s0"]


def session_processes(session: int) -> set[int]:
    """Pids of the live processes in a session (Linux /proc; zombies count as gone)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            pids.add(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal (prctl) is Linux's")
def test_kill_9_takes_the_local_workers_down_and_their_runs_end_killed(slow_grid, tracking_uri):
    """kill -9 of the invoking process: the kernel sends its worker processes SIGTERM, so the
    pairings in flight end KILLED at once instead of training on unseen (they would end
    FINISHED), and no worker outlives it. Only the parent run is left, for the next run."""
    run = Attnbench(slow_grid, tracking_uri, "--workers", "2")
    run.wait_for(r"^start toy/", count=2)  # both workers busy
    assert len(session_processes(run.proc.pid) - {run.proc.pid}) >= 2
    run.send(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 20
    while session_processes(run.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session_processes(run.proc.pid), "a worker outlived the process that started it"
    _, parents, children = store(tracking_uri)
    statuses = Counter(c.info.status for c in children)
    assert statuses["KILLED"] >= 1 and statuses["RUNNING"] == 0, statuses
    assert [p.info.status for p in parents] == ["RUNNING"]  # nobody could close it: the next run does


def test_a_worker_killed_mid_pairing_fails_it_closes_its_run_and_the_grid_goes_on(slow_grid, tracking_uri):
    """The OOM killer (or kill -9) takes one worker: its pairing fails at once, its run is
    closed FAILED by the invoking process (not left RUNNING until stale), the rest still train."""
    run = Attnbench(slow_grid, tracking_uri, "--workers", "2")
    run.wait_for(r"^start toy/", count=2)  # the store exists; the workers are claiming
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a worker holding a run: its pid is the run's owner
        held = [c for c in store(tracking_uri)[2] if c.info.status == "RUNNING" and c.data.tags.get(Tag.CLAIM) == record.CLAIM_HELD]
        if held:
            break
        time.sleep(0.05)
    victim = held[0]
    pid = int(victim.data.tags[Tag.OWNER].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    assert run.wait() == 1, run.output
    assert f"worker process {pid} died (exit code -9)" in run.output
    parents, children = assert_clean(tracking_uri)
    closed = next(c for c in children if c.info.run_id == victim.info.run_id)
    assert closed.info.status == "FAILED" and closed.data.tags[Tag.CLOSED_BECAUSE] == record.WORKER_DIED
    assert f"worker process {pid} died" in closed.data.tags[Tag.ERROR]
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    assert [p.info.status for p in parents] == ["FAILED"]


def test_piped_output_is_line_based_and_ctrl_c_on_the_pipeline_closes_the_runs(slow_grid, tracking_uri):
    run = Attnbench(slow_grid, tracking_uri, shell_suffix="| tee log.txt")
    run.wait_for(r"^\[1/4\] toy/")  # a whole pairing, then one in flight
    run.wait_for(r"^start toy/", count=2)
    run.send(signal.SIGINT, group=True)  # what Ctrl-C does: the whole foreground group, tee included
    run.wait()
    parents, children = assert_clean(tracking_uri)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert sorted(c.info.status for c in children) == ["FINISHED", "KILLED"]
    log = (slow_grid / "log.txt").read_text()
    assert re.search(r"^start toy/gru/s0 \(run [0-9a-f]{8}\)$", log, re.M)
    assert re.search(r"^\[1/4\] toy/gru/s0: finished accuracy", log, re.M)
    assert "\r" not in log and "━" not in log  # lines, not a redrawn bar


def test_a_signal_landing_in_a_weakref_callback_still_interrupts(capsys):
    # what an import's module-lock callback does when SIGTERM arrives during it (seen in CI)
    import weakref

    from attnbench.run.interrupts import Interrupted, interrupts_raise

    class Thing:
        pass

    with pytest.raises(Interrupted) as info:
        with interrupts_raise():
            thing = Thing()
            ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGTERM))  # the handler runs in here
            del thing
            for _ in range(500):  # ordinary code, where the re-sent signal lands
                time.sleep(0.01)
    assert info.value.signum == signal.SIGTERM and ref() is None
    assert "Traceback" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_no_signal_interrupts_the_closing_of_runs():
    from attnbench.run import interrupts

    with interrupts.interrupts_raise():
        interrupts.closing()  # what the runner's exit path says before it closes runs
        signal.raise_signal(signal.SIGINT)  # would raise Interrupted here before
        time.sleep(0.01)
    assert not interrupts._closing  # the next grid in this process starts afresh
