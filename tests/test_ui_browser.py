"""The MLflow UI as a person sees it: `attnbench ui` against a store, opened in headless chromium.

Builds a tiny grid's runs directly in a temporary SQLite store (the runner's conventions),
serves it with ``attnbench ui`` on a free loopback port, opens the experiment's runs page
through Playwright with Debian's chromium (never a downloaded browser), expands the parent
run, adds a metric column, asserts that the child run names and the metric values are
shown, and saves a screenshot. The server is stopped whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from attnbench.run.record import Tag

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run"]
SERVER_START_S = 180  # a cold MLflow server on a busy 2-core machine takes a while
UI_TIMEOUT_MS = 120_000
METRIC = "test/accuracy"
MODELS = {"rnn-lstm": 0.55, "transformer-multihead": 0.9}


def _require_browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright python package is missing (pip install playwright; no browser download needed)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def store(tmp_path, migrated_store):
    """A store holding one parent run and a child per model (sentiment, seed 0)."""
    from mlflow.tracking import MlflowClient

    from synthetic_runs import create_parent, log_child_run

    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("quick", artifact_location=str(tmp_path / "artifacts"))
    parent = create_parent(client, exp, "quick", "name: quick\n")
    children = {model: log_child_run(client, exp, parent, task="sentiment", model=model, seed=0, skill=skill,
                                     n_examples=40)
                for model, skill in MODELS.items()}
    client.set_terminated(parent)
    return uri, exp, client, children


@pytest.fixture
def ui_server(store, tmp_path):
    """``attnbench ui`` on a free loopback port; yields its base URL and always stops it."""
    _require_browser()
    uri = store[0]
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    env = dict(os.environ, MLFLOW_WORKERS="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-c", "from attnbench.cli import main; main()", "ui",
           "--port", str(port), "--host", "127.0.0.1", "--tracking-uri", uri]
    # Its own session, so stopping it also stops the mlflow/uvicorn processes it starts.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"attnbench ui exited with {proc.returncode}:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=3) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MLflow server not up after {SERVER_START_S} s:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        stop_process_group(proc.pid)
        log.close()


def stop_process_group(pgid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the whole group (attnbench ui, mlflow server, uvicorn), SIGKILL what outlives the grace."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.waitpid(pgid, os.WNOHANG)  # reap our direct child so it stops counting
        except ChildProcessError:
            pass
        try:
            os.killpg(pgid, 0)  # raises once no process of the group is left
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_experiment_page_shows_child_runs_and_a_metric_column(store, ui_server, tmp_path):
    from playwright.sync_api import sync_playwright

    _, exp, client, children = store
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(f"{ui_server}/#/experiments/{exp}/runs")
            parent_link = page.get_by_role("link", name="quick", exact=True)
            parent_link.last.wait_for()
            # Child runs are nested under the parent: expand it as a person would.
            page.locator("[role=row]").filter(has=parent_link).locator(
                "[col-id='attributes.`Run Name`'] button").first.click()
            for model in MODELS:
                page.get_by_role("link", name=f"sentiment/{model}/seed0").wait_for()
            # Metric and tag columns are opt-in in the MLflow 3 table: add them, drop the empty ones.
            page.get_by_role("button", name="Columns").click()
            for column in ("Dataset", "Source", "Models", METRIC, Tag.MODEL):
                page.get_by_text(column, exact=True).last.click()
            page.keyboard.press("Escape")
            page.get_by_role("columnheader", name=METRIC).first.wait_for()

            close_assistant = page.get_by_role("button", name="Close")
            if close_assistant.count():
                close_assistant.first.click()
            page.wait_for_timeout(500)
            shot = tmp_path / "mlflow_ui_runs.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")

            for model, run_id in children.items():
                # The grid renders the pinned name column and the other columns as separate
                # row elements that share a row-index.
                name_row = page.locator("[role=row]").filter(
                    has=page.get_by_role("link", name=f"sentiment/{model}/seed0")).first
                cells = page.locator(f"[role=row][row-index='{name_row.get_attribute('row-index')}'] [role=gridcell]")
                shown = cells.and_(page.locator(f"[col-id*='{METRIC}']")).first.inner_text()
                assert float(shown) == pytest.approx(client.get_run(run_id).data.metrics[METRIC], abs=1e-3)
                assert cells.and_(page.locator(f"[col-id*='{Tag.MODEL}']")).first.inner_text() == model
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
