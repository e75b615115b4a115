"""Where a pairing's time goes: the phase clock, and a tiny run that logs phases and head statistics."""

import time

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import attnbench
from attnbench.cli import app
from attnbench.phases import PhaseClock, TimedCalls
from attnbench.run import record, timings

from conftest import write_grid
from test_runner import GRID as RUNNER_GRID


def test_phases_are_exclusive_and_add_up_to_the_wall_time():
    clock = PhaseClock()
    started = time.perf_counter()
    with clock.current():
        with attnbench.phase("train"):
            time.sleep(0.05)
            with attnbench.phase("tracking"):  # nested: counted once, as tracking
                time.sleep(0.03)
        time.sleep(0.01)  # outside any phase: "other"
    wall = time.perf_counter() - started
    totals = clock.totals()
    assert totals["tracking"] == pytest.approx(0.03, abs=0.02)
    assert totals["train"] == pytest.approx(0.05, abs=0.02)
    assert totals["train"] < 0.075  # the nested tracking time is not counted in train too
    assert sum(totals.values()) == pytest.approx(wall, abs=0.01)


def test_phase_outside_a_pairing_is_a_no_op_and_timed_calls_pass_through():
    with attnbench.phase("data"):
        pass  # no clock current: nothing to record, nothing raised

    class Store:
        uri = "x"

        def write(self, value):
            time.sleep(0.02)
            return value * 2

    clock = PhaseClock()
    store = TimedCalls(Store(), "tracking")
    with clock.current():
        assert store.write(4) == 8 and store.uri == "x"
    assert clock.totals()["tracking"] >= 0.02


def test_phase_line_lists_phases_in_flow_order():
    metrics = {record.phase_metric("tracking"): 0.31, record.phase_metric("train"): 31.2,
               record.phase_metric("data"): 4.0, record.phase_metric("other"): 0.01, "perf/wall_s": 40.0}
    assert timings.phase_line(metrics) == "data 4 · train 31 · tracking 0.31 s"


GRID = RUNNER_GRID.replace("name: toygrid", "name: toyphases")  # rnn-gru and transformer-multihead on toy


def test_a_tiny_run_logs_phase_seconds_and_head_statistics(workdir, tracking_uri):
    write_grid(workdir / "g.yaml", GRID)
    result = CliRunner().invoke(app, ["run", "g.yaml", "--tracking-uri", tracking_uri, "--plugin", "attnbench_test_plugins"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("toyphases")
    children = {r.data.tags[record.Tag.FAMILY]: r
                for r in client.search_runs([exp.experiment_id], filter_string=record.CHILD_FILTER)}
    assert set(children) == {"rnn", "transformer"}
    for run in children.values():
        metrics = run.data.metrics
        phases = {record.phase_of(k): v for k, v in metrics.items() if record.phase_of(k)}
        assert {"data", "train", "eval", "pictures", "tracking"} <= set(phases), phases
        assert sum(phases.values()) == pytest.approx(metrics[record.PERF["pairing_s"]])
        assert metrics[record.PERF["pairing_s"]] >= metrics[record.PERF["wall_s"]] - 0.5
    assert "train " in result.output and " · " in result.output  # the per-pairing phase line

    transformer = children["transformer"]
    heads = {k: v for k, v in transformer.data.metrics.items() if k.startswith(record.HEADS_PREFIX)}
    # one self-attention module (1 layer) x 2 heads x 3 statistics
    assert len(heads) == 2 * len(record.HEAD_STATISTICS), sorted(heads)
    first = [v for k, v in heads.items() if k.endswith("/first_token")]
    assert all(0.0 <= v <= 1.0 for v in first)
    artifacts = {a.path for a in client.list_artifacts(transformer.info.run_id)}
    assert record.HEADS_TABLE in artifacts
    pictures = {a.path for a in client.list_artifacts(transformer.info.run_id, record.PICTURES_DIR)}
    assert f"{record.PICTURES_DIR}/{record.HEAD_STATS_PICTURE}" in pictures

    rnn = children["rnn"]
    assert not any(k.startswith(record.HEADS_PREFIX) for k in rnn.data.metrics)
    assert "no attention modules" in rnn.data.tags[record.Tag.HEAD_STATS]
