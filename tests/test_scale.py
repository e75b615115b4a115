"""Grids at scale, in this process: the claim race rule, stale runs, provenance in the run_key,
fail-fast store checks, the store lock and bad execution input (docs/scale.md)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from attnbench.cli import app
from attnbench.run import claims, executors, record
from attnbench.run.record import Tag

from conftest import write_grid
from test_runner import GRID, invoke, runs_of


def new_experiment(uri: str, name: str = "claims") -> tuple[MlflowClient, str]:
    client = MlflowClient(uri)
    return client, client.create_experiment(name)


def pending_claim(client, exp, run_key, *, start_ms, claim=record.CLAIM_PENDING, heartbeat=None):
    tags = {Tag.ROLE: record.ROLE_CHILD, Tag.RUN_KEY: run_key, Tag.CLAIM: claim, Tag.OWNER: "otherhost:1",
            Tag.HEARTBEAT: f"{heartbeat if heartbeat is not None else time.time():.3f}"}
    return client.create_run(exp, start_time=start_ms, tags=tags, run_name="rival").info.run_id


def claim_now(client, exp, run_key, lease_s=60.0):
    return claims.claim(client, exp, "mine", {Tag.ROLE: record.ROLE_CHILD, Tag.RUN_KEY: run_key}, run_key,
                        lease_s=lease_s, settle_s=0.0)


def test_claim_race_the_earlier_pending_claim_wins_and_the_loser_is_removed(tracking_uri):
    client, exp = new_experiment(tracking_uri)
    rival = pending_claim(client, exp, "k1", start_ms=int(time.time() * 1000) - 5000)  # created earlier
    result = claim_now(client, exp, "k1")
    assert not result.won and result.winner.info.run_id == rival and not result.finished
    lost = [r for r in client.search_runs([exp], run_view_type=3) if r.info.run_id != rival]  # 3: all, deleted too
    assert len(lost) == 1 and lost[0].info.lifecycle_stage == "deleted" and lost[0].info.status == "KILLED"
    assert lost[0].data.tags[Tag.CLAIM] == record.claim_lost_to(rival)
    assert [r.info.run_id for r in client.search_runs([exp])] == [rival]  # compare and the UI see one run


def test_claim_race_a_later_pending_claim_loses_but_a_held_claim_always_wins(tracking_uri):
    client, exp = new_experiment(tracking_uri)
    later = pending_claim(client, exp, "k2", start_ms=int(time.time() * 1000) + 60_000)
    won = claim_now(client, exp, "k2")
    assert won.won and client.get_run(won.run_id).data.tags[Tag.CLAIM] == record.CLAIM_HELD
    assert won.run_id != later
    # a claim already training wins even against an earlier pending one
    held = pending_claim(client, exp, "k3", start_ms=int(time.time() * 1000) + 60_000, claim=record.CLAIM_HELD)
    lost = claim_now(client, exp, "k3")
    assert not lost.won and lost.winner.info.run_id == held


def test_a_claim_with_an_old_heartbeat_is_stale_and_does_not_block(tracking_uri):
    client, exp = new_experiment(tracking_uri)
    old = time.time() - 120
    ghost = pending_claim(client, exp, "k4", start_ms=int(old * 1000), claim=record.CLAIM_HELD, heartbeat=old)
    state = claims.pairing_state(client, exp, "k4", lease_s=60)
    assert [r.info.run_id for r in state.stale] == [ghost] and not state.live
    assert claims.pairing_state(client, exp, "k4", lease_s=600).live  # within a longer lease it is alive
    lines = claims.close_stale(client, state.stale, lease_s=60)
    assert "lost heartbeat" in lines[0] and "otherhost:1" in lines[0]
    closed = client.get_run(ghost)
    assert closed.info.status == "FAILED" and closed.data.tags[Tag.CLOSED_BECAUSE] == record.LOST_HEARTBEAT
    assert claim_now(client, exp, "k4", lease_s=60).won


def test_a_lone_invocation_claims_without_waiting_and_waits_while_another_runs(tracking_uri):
    client, exp = new_experiment(tracking_uri)
    ours = client.create_run(exp, tags=record.parent_tags("claims")).info.run_id

    def claim_timed(run_key):
        started = time.perf_counter()
        result = claims.claim(client, exp, "mine", {Tag.ROLE: record.ROLE_CHILD, Tag.RUN_KEY: run_key}, run_key,
                              lease_s=60.0, settle_s=1.5, parent_id=ours)
        return result, time.perf_counter() - started

    alone, waited = claim_timed("k5")
    assert alone.won and waited < 1.0  # nobody else runs this grid: nobody to race
    other = client.create_run(exp, tags=record.parent_tags("claims")).info.run_id  # a second invocation starts
    contested, waited = claim_timed("k6")
    assert contested.won and waited >= 1.5  # its claims may be in flight: settle first
    client.set_terminated(other, "FINISHED")
    assert claim_timed("k7")[1] < 1.0


LAST_WORDS = "x" * 1_000_000  # larger than a pipe's buffer: only a flushed queue delivers all of it


def _report_then_leave(events):
    events.put(LAST_WORDS)
    executors._leave(events)


def test_a_worker_that_leaves_without_teardown_still_delivers_what_it_reported():
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # as the local pool starts its workers
    events = context.Queue()
    worker = context.Process(target=_report_then_leave, args=(events,))
    worker.start()
    assert events.get(timeout=60) == LAST_WORDS
    worker.join(timeout=60)
    assert worker.exitcode == 0


def _exit_at_once(job, tasks, events, parent):
    os._exit(3)  # a worker process that dies before taking any pairing (say, killed while importing)


def test_with_every_worker_process_gone_the_queued_pairings_fail_instead_of_waiting_forever(monkeypatch):
    monkeypatch.setattr(executors, "_pool_main", _exit_at_once)
    done = {}
    pool = executors.LocalPoolExecutor(None, lambda index, kind, value: done.setdefault(index, value), workers=2)
    try:
        pool.submit(0)
        pool.submit(1)
        deadline = time.monotonic() + 60
        while len(done) < 2 and time.monotonic() < deadline:
            pool.poll(0.2)
    finally:
        pool.stop()
    assert sorted(done) == [0, 1], "the queued pairings were never reported"
    assert {r.status for r in done.values()} == {"FAILED"}
    assert all("every worker process has exited (exit codes 3, 3)" in r.error for r in done.values())


def test_a_store_error_while_closing_a_dead_workers_run_only_warns(capsys):
    """Closing the run of a worker that died is a courtesy: a failing store must not end the grid."""
    from rich.console import Console

    from attnbench.run.runner import GridRunner

    class BrokenStore:
        def get_run(self, run_id):
            raise ConnectionError("store went away")

    runner = GridRunner.__new__(GridRunner)  # only the client and the console are used here
    runner.client, runner.console = BrokenStore(), Console(width=200)
    runner._close_if_open("0123456789abcdef", "worker process 7 died (exit code -9)")
    assert "could not close run 01234567 (ConnectionError: store went away)" in capsys.readouterr().out


def make_ghost(uri: str, run_key: str, experiment: str = "toygrid", age_s: float = 600) -> tuple[str, str]:
    """What kill -9 leaves: a RUNNING parent and child whose heartbeats stopped ``age_s`` ago."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    then = time.time() - age_s
    beat = {Tag.OWNER: "deadhost:4242", Tag.HEARTBEAT: f"{then:.3f}"}
    parent = client.create_run(exp_id, start_time=int(then * 1000), tags=record.parent_tags(experiment) | beat)
    child = client.create_run(exp_id, start_time=int(then * 1000), run_name="toy/gru/s0", tags=beat | {
        Tag.ROLE: record.ROLE_CHILD, Tag.RUN_KEY: run_key, Tag.CLAIM: record.CLAIM_HELD,
        record.PARENT_RUN_ID: parent.info.run_id})
    return parent.info.run_id, child.info.run_id


def dry_run_keys(workdir, *args) -> dict[str, str]:
    result = invoke(workdir, "sqlite:///unused.db", "--dry-run", *args)
    assert result.exit_code == 0, result.output
    return dict(re.findall(r"(toy/\S+/s\d+)\s+│[^│]*│\s+([0-9a-f]{16})", result.output))


def test_stale_command_lists_and_closes_ghost_runs(workdir, tracking_uri):
    key = dry_run_keys(workdir)["toy/gru/s0"]
    parent, child = make_ghost(tracking_uri, key)
    listed = CliRunner().invoke(app, ["stale", "g.yaml", "--tracking-uri", tracking_uri, "--lease", "60"])
    assert listed.exit_code == 0, listed.output
    assert "2 stale runs" in listed.output and child in listed.output and "--close" in listed.output
    assert MlflowClient(tracking_uri).get_run(child).info.status == "RUNNING"  # listing changes nothing
    closed = CliRunner().invoke(app, ["stale", "g.yaml", "--tracking-uri", tracking_uri, "--lease", "60", "--close"])
    assert closed.exit_code == 0 and closed.output.count("closed stale run") == 2
    client = MlflowClient(tracking_uri)
    for run_id in (parent, child):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags[Tag.CLOSED_BECAUSE] == "lost heartbeat"
    again = CliRunner().invoke(app, ["stale", "--tracking-uri", tracking_uri, "--lease", "60"])
    assert again.exit_code == 0 and "no stale runs" in again.output


def test_run_closes_a_ghost_then_trains_its_pairing(workdir, tracking_uri):
    key = dry_run_keys(workdir)["toy/gru/s0"]
    parent, child = make_ghost(tracking_uri, key)
    result = invoke(workdir, tracking_uri, "--lease", "60")
    assert result.exit_code == 0, result.output
    assert "closed stale run toy/gru/s0" in result.output and "lost heartbeat" in result.output
    client, parents, children = runs_of(tracking_uri)
    assert client.get_run(parent).info.status == "FAILED" and client.get_run(child).info.status == "FAILED"
    finished = [r.data.tags[Tag.RUN_KEY] for r in children if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(set(finished)) and key in finished and len(finished) == 2


PROVENANCE_PLUGIN = '''
from attnbench import hookimpl
from attnbench_test_plugins import ToyTask

class ProvToyTask(ToyTask):
    """version {version}"""

@hookimpl
def register_tasks(register):
    register("prov_toy", ProvToyTask)
'''


def test_a_changed_plugin_module_changes_the_run_key_unless_the_grid_opts_out(workdir, monkeypatch):
    from attnbench import plugin_host

    monkeypatch.syspath_prepend(str(workdir))
    grid = GRID.replace("task: [toy]", "task: [prov_toy]").replace("toy: {n_train: 48}", "prov_toy: {n_train: 48}")

    def keys(version: int, *args) -> dict:
        (workdir / "prov_plugin.py").write_text(PROVENANCE_PLUGIN.format(version=version))
        sys.modules.pop("prov_plugin", None)
        plugin_host.reset_cache()
        write_grid(workdir / "g.yaml", grid)
        result = CliRunner().invoke(app, ["run", "g.yaml", "--dry-run", "--plugin", "attnbench_test_plugins",
                                          "--plugin", "prov_plugin", *args])
        assert result.exit_code == 0, result.output
        return dict(re.findall(r"(prov_toy/\S+/s\d+)\s+│[^│]*│\s+([0-9a-f]{16})", result.output))

    first, same, changed = keys(1), keys(1), keys(2)
    assert first == same and len(first) == 2
    assert all(first[name] != changed[name] for name in first)  # edited plugin source: new keys
    opt_out = ["--set", "execution.provenance_in_run_key=false"]
    assert keys(1, *opt_out) == keys(2, *opt_out)


def test_runs_record_which_plugin_provided_task_family_and_attention(workdir, tracking_uri):
    result = invoke(workdir, tracking_uri, "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    _, _, children = runs_of(tracking_uri)
    tags = next(r for r in children if r.data.tags[Tag.FAMILY] == "transformer").data.tags
    assert tags[Tag.PROVIDED_BY + "task"].startswith("--plugin source ")  # a --plugin module: hashed
    assert re.fullmatch(r"attnbench 0\.1\.0( source [0-9a-f]{12})?", tags[Tag.PROVIDED_BY + "attention"])
    assert tags[Tag.PROVIDED_BY + "family"].startswith("attnbench ")
    rnn = next(r for r in children if r.data.tags[Tag.FAMILY] == "rnn").data.tags
    assert Tag.PROVIDED_BY + "attention" not in rnn  # no attention, no provider


def test_an_installed_distribution_is_known_by_its_version_a_source_tree_by_its_hash(tmp_path, monkeypatch):
    from test_plugins import example_plugin_source

    from attnbench.plugin_host import get_host

    def install(root: Path, version: str) -> None:
        root.mkdir(parents=True)
        (root / "attnbench_example_plugin.py").write_text(textwrap.dedent(example_plugin_source()))
        info = root / f"attnbench_example_plugin-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: attnbench-example-plugin\nVersion: {version}\n")
        (info / "entry_points.txt").write_text("[attnbench]\nlinear = attnbench_example_plugin\n")
        monkeypatch.syspath_prepend(str(root))

    from attnbench import plugin_host

    sys.modules.pop("attnbench_example_plugin", None)  # another test may have imported its own copy
    plugin_host.reset_cache()
    install(tmp_path / "lib" / "site-packages", "1.2")
    assert get_host().attention.get("linear").provenance == "attnbench-example-plugin 1.2"
    sys.modules.pop("attnbench_example_plugin", None)
    plugin_host.reset_cache()
    install(tmp_path / "checkout", "1.2")  # the same version from a source tree (as pip install -e runs it)
    assert re.fullmatch(r"attnbench-example-plugin 1\.2 source [0-9a-f]{12}", get_host().attention.get("linear").provenance)
    sys.modules.pop("attnbench_example_plugin", None)


# ---------------------------------------------------------------- fail fast, exit 2


def test_unreachable_tracking_server_exits_2_fast_naming_the_uri(workdir):
    started = time.monotonic()
    result = invoke(workdir, "http://127.0.0.1:9/")
    assert result.exit_code == 2, result.output
    assert time.monotonic() - started < 10
    assert "http://127.0.0.1:9/" in result.output and "mlflow server" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("uri, fragment", [
    ("ftp://example.org/store", "unsupported scheme 'ftp'"),
    ("NOTADB", "is not a SQLite database"),
])
def test_bad_store_exits_2(workdir, uri, fragment):
    if uri == "NOTADB":
        (workdir / "notes.db").write_text("this is a text file, not a database\n" * 10)
        uri = f"sqlite:///{workdir / 'notes.db'}"
    result = invoke(workdir, uri)
    assert result.exit_code == 2 and fragment in result.output, result.output


@pytest.mark.parametrize("args, fragment", [
    (["--workers", "0"], "--workers '0': valid: a number of 1 or more, or auto"),
    (["--workers", "-3"], "--workers '-3': valid: a number of 1 or more, or auto"),
    (["--set", "execution.workers=many"], "execution.workers: valid: a number of 1 or more, or auto (one per CPU core) (got 'many')"),
    (["--executor", "dask"], "--executor 'dask': valid: local, ray"),
    (["--lease", "0"], "--lease 0.0: must be a positive"),
    (["--set", "execution.heartbeat_s=600", "--lease", "60"], "heartbeat_s (600.0) must be shorter than lease_s"),
    (["--set", "execution.workerz=2"], "execution.workerz: unknown field; valid: workers"),
])
def test_bad_execution_input_exits_2(workdir, tracking_uri, args, fragment):
    result = invoke(workdir, tracking_uri, *args)
    assert result.exit_code == 2, result.output
    assert fragment in " ".join(result.output.split()), result.output


def test_ray_executor_without_ray_says_how_to_install_it(workdir, tracking_uri, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = invoke(workdir, tracking_uri, "--executor", "ray")
    assert result.exit_code == 2 and 'pip install "attnbench[ray]"' in result.output, result.output


def test_unreachable_ray_address_exits_2_within_30_s(workdir, tracking_uri):
    pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
    started = time.monotonic()
    result = invoke(workdir, tracking_uri, "--executor", "ray", "--ray-address", "127.0.0.1:9")
    assert result.exit_code == 2 and "--ray-address 127.0.0.1:9" in result.output, result.output
    assert time.monotonic() - started < 30


def test_more_workers_than_cores_warns(monkeypatch, capsys):
    from attnbench.cli import run as run_cli
    from attnbench.config.execution import ExecutionConfig

    monkeypatch.setattr("attnbench.config.execution.usable_cores", lambda: 2)
    run_cli._check_execution(ExecutionConfig(workers=3))
    assert "3 workers on 2 CPU cores" in capsys.readouterr().err
    run_cli._check_execution(ExecutionConfig(workers=2))
    assert capsys.readouterr().err == ""


def test_workers_auto_is_one_per_usable_core(monkeypatch):
    from attnbench.config.execution import ExecutionConfig

    monkeypatch.setattr("attnbench.config.execution.usable_cores", lambda: 3)
    assert ExecutionConfig(workers="auto").workers == 3
    assert ExecutionConfig(workers="2").workers == 2 and ExecutionConfig().workers == 1


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "max 100000\n"}, None),                      # cgroup v2, no limit
    ({"cpu.max": "150000 100000\n"}, 1.5),                    # v2: docker run --cpus 1.5
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),   # v1, no limit
    ({"cpu,cpuacct/cpu.cfs_quota_us": "200000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 2.0),
    ({}, None),                                              # no cgroup to read (macOS, ...)
])
def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path, files, quota):
    from attnbench.config.execution import cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(tmp_path) == quota


def test_usable_cores_are_capped_by_a_containers_quota(monkeypatch):
    from attnbench.config import execution

    monkeypatch.setattr(execution.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for quota, cores in [(None, 4), (1.5, 2), (0.5, 1), (12.0, 4)]:  # --cpus 1.5: two workers, rounded up
        monkeypatch.setattr(execution, "cpu_quota", lambda quota=quota: quota)
        assert execution.usable_cores() == cores, quota


def test_no_more_workers_than_pairings_left_one_trains_in_this_process(workdir, tracking_uri):
    import os

    one_pairing = GRID.replace("    - {family: transformer, attention: multihead}\n", "")
    result = invoke(workdir, tracking_uri, "--workers", "4", grid=one_pairing)
    assert result.exit_code == 0, result.output
    _, _, (child,) = runs_of(tracking_uri)
    assert child.info.status == "FINISHED"
    assert child.data.tags[Tag.OWNER].endswith(f":{os.getpid()}")  # no worker process was started for it


# ---------------------------------------------------------------- the store lock

OPEN_STORE = textwrap.dedent("""
    import sys
    from attnbench.run.tracking import open_client
    client = open_client(sys.argv[1])
    print(client.search_experiments()[0].name)
""")


def test_three_processes_creating_one_new_sqlite_store_at_once_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert all(out.strip() == "Default" for out, _ in outs)
    with sqlite3.connect(tmp_path / "new.db") as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
    assert "runs" in tables and not any(t.startswith("_alembic_tmp") for t in tables)


def test_several_workers_take_the_longest_pairings_first_one_worker_keeps_grid_order():
    from types import SimpleNamespace

    from attnbench.run.runner import submission_order

    specs = [SimpleNamespace(run_key=k) for k in "abcde"]
    steps = {"a": 188, "b": 800, "c": 180, "d": 800}  # e: unknown (counts as 0)
    assert submission_order([0, 1, 2, 3, 4], specs, steps, slots=1) == [0, 1, 2, 3, 4]
    assert submission_order([0, 1, 2, 3, 4], specs, steps, slots=2) == [1, 3, 0, 2, 4]  # ties keep grid order
    assert submission_order([2, 0], specs, steps, slots=2) == [0, 2]


def test_preflight_counts_each_pairings_planned_steps(workdir, monkeypatch):
    from attnbench.config import expand_grid, load_experiment
    from attnbench.plugin_host import get_host
    from attnbench.run.preflight import preflight

    monkeypatch.setenv("ATTNBENCH_CACHE", str(workdir / "cache"))
    host = get_host(["attnbench_test_plugins"])
    write_grid(workdir / "g.yaml", GRID)
    for overrides, expected in (([], 2 * 3), (["train.max_steps=4"], 4)):  # 2 epochs x 48/16 batches, or the cap
        experiment, _ = load_experiment(workdir / "g.yaml", overrides)
        specs = expand_grid(experiment, host)
        report = preflight(specs, host)
        assert report.steps == {spec.run_key: expected for spec in specs}
