"""Parallel grids: two invocations of one grid at once, the same metrics whatever the executor,
and the team set-up of docs/scale.md (mlflow server on PostgreSQL) with --workers 2."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from attnbench.cli import app
from attnbench.run import record
from attnbench.run.record import Tag

from conftest import write_grid
from test_scale_signals import SLOW_GRID, Attnbench, assert_clean, store

FOUR = SLOW_GRID.replace("slow_s: 0.5", "slow_s: 0.0")


def test_two_invocations_of_one_grid_at_once_train_each_pairing_once(workdir):
    # a new SQLite file: the two also race to create the store (serialised by its lock)
    write_grid(workdir / "g.yaml", SLOW_GRID)
    uri = f"sqlite:///{workdir / 'fresh.db'}"
    first, second = Attnbench(workdir, uri), Attnbench(workdir, uri)
    assert first.wait(timeout=400) == 0, first.output
    assert second.wait(timeout=400) == 0, second.output
    parents, children = assert_clean(uri)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 4 and len({c.data.tags[Tag.RUN_KEY] for c in finished}) == 4
    assert [p.info.status for p in parents] == ["FINISHED", "FINISHED"]
    both = first.output + second.output
    assert "claimed by" in both  # the one that waited said for whom
    for out in (first.output, second.output):  # each reports every pairing, trained or seen finished
        assert out.count("skip toy/") + out.count(": finished accuracy") >= 4, out


def test_metrics_are_the_same_serially_with_two_workers_and_with_ray(workdir, tracking_uri, monkeypatch):
    write_grid(workdir / "g.yaml", FOUR)
    base = ["run", "g.yaml", "--tracking-uri", tracking_uri, "--plugin", "attnbench_test_plugins"]
    variants = {"serial": [], "workers2": ["--workers", "2"]}
    try:
        import ray  # noqa: F401

        variants["ray"] = ["--executor", "ray", "--workers", "2"]
        # Ray's worker processes inherit the environment: let them import the test plugins
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    except ImportError:
        pass
    metrics = {}
    for name, extra in variants.items():
        result = CliRunner().invoke(app, base + ["--set", f"name=same_{name}", *extra])
        assert result.exit_code == 0, (name, result.output)
        from test_runner import runs_of

        _, _, children = runs_of(tracking_uri, f"same_{name}")
        assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
        metrics[name] = {c.info.run_name: {k: v for k, v in c.data.metrics.items() if k.startswith(("test/", "val/", "train/"))}
                         for c in children}
    if "ray" not in metrics:
        pytest.skip('Ray is not installed (pip install -e ".[ray]"): serial and --workers 2 agreed')
    assert metrics["serial"] == metrics["workers2"] == metrics["ray"]
    assert all("test/accuracy" in m for m in metrics["serial"].values())


def test_a_ray_task_whose_process_dies_fails_its_pairing_and_its_run_is_closed(workdir, tracking_uri):
    pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
    write_grid(workdir / "g.yaml", SLOW_GRID)
    run = Attnbench(workdir, tracking_uri, "--executor", "ray", "--workers", "2", "--set", "grid.seed=[0]")
    run.wait_for(r"^start toy/", count=2, timeout=300)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a Ray worker holding a run: its pid is the run's owner
        held = [c for c in store(tracking_uri)[2] if c.info.status == "RUNNING" and c.data.tags.get(Tag.CLAIM) == record.CLAIM_HELD]
        if held:
            break
        time.sleep(0.05)
    victim = held[0]
    os.kill(int(victim.data.tags[Tag.OWNER].rsplit(":", 1)[1]), signal.SIGKILL)
    assert run.wait(timeout=300) == 1, run.output
    assert "Ray task failed" in run.output
    parents, children = assert_clean(tracking_uri)
    closed = next(c for c in children if c.info.run_id == victim.info.run_id)
    assert closed.info.status == "FAILED" and "Ray task failed" in closed.data.tags[Tag.ERROR]
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]


# ---------------------------------------------------------------- the team set-up on PostgreSQL

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server and the processes it started (mlflow server runs uvicorn and a job runner)."""
    for signum, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def as_postgres_user(argv: list[str], user: str | None) -> list[str]:
    """initdb and postgres refuse to run as root: run them as another user when we are root."""
    return ["runuser", "-u", user, "--", *argv] if user else argv


@pytest.mark.skipif(not PG_BIN, reason="PostgreSQL binaries missing (apt-get install postgresql)")
def test_mlflow_server_on_postgresql_with_two_workers(workdir):
    pytest.importorskip("psycopg", reason='psycopg missing: pip install -e ".[dev]"')
    bin_dir = Path(PG_BIN[-1])
    user = "nobody" if os.geteuid() == 0 else None
    # pytest's temp folders are private to root; the server's user must reach its own folder
    tmp_path = Path(tempfile.mkdtemp(prefix="attnbench-pg-"))
    os.chmod(tmp_path, 0o755)
    data, sock = tmp_path / "pgdata", tmp_path / "pgsock"
    for folder in (data, sock):
        folder.mkdir()
        if user:
            shutil.chown(folder, user)
    pg_port, mlflow_port = free_port(), free_port()
    log = tmp_path / "pg.log"
    if user:
        log.touch()
        shutil.chown(log, user)
    started, server = False, None
    try:
        subprocess.run(as_postgres_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"], user),
                       check=True, capture_output=True, timeout=120)
        subprocess.run(as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                                         f"-c listen_addresses='' -c unix_socket_directories={sock} -p {pg_port}",
                                         "start"], user), check=True, capture_output=True, timeout=120)
        started = True
        subprocess.run([str(bin_dir / "createdb"), "-h", str(sock), "-p", str(pg_port), "-U", "mlflow", "mlflow"],
                       check=True, capture_output=True, timeout=60)
        backend = f"postgresql+psycopg://mlflow@/mlflow?host={sock}&port={pg_port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
             "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mlflow.log", "w"), start_new_session=True)
        uri = f"http://127.0.0.1:{mlflow_port}"
        deadline = time.monotonic() + 180
        while True:  # up once its API answers (the first start migrates the database)
            try:
                if requests.get(f"{uri}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "mlflow.log").read_text()[-3000:]
                time.sleep(0.5)
        write_grid(workdir / "g.yaml", FOUR)
        run = Attnbench(workdir, uri, "--workers", "2")
        assert run.wait(timeout=400) == 0, run.output
        parents, children = assert_clean(uri)
        assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
        assert len({c.data.tags[Tag.RUN_KEY] for c in children}) == 4
        client, _, _ = store(uri)
        arts = [a.path for a in client.list_artifacts(children[0].info.run_id)]
        assert "predictions.jsonl" in arts  # through the server's artifact proxy
        assert list((tmp_path / "artifacts").rglob("predictions.jsonl"))
    finally:
        if server is not None:
            stop_group(server)
        if started:
            subprocess.run(as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], user),
                           capture_output=True, timeout=60)
        shutil.rmtree(tmp_path, ignore_errors=True)
