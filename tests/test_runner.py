"""The grid runner end to end on a tiny task: MLflow layout, skipping, failures, Ctrl-C, seeds."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from attnbench.cli import app
from attnbench.run.record import Tag

from conftest import write_grid

GRID = """
name: toygrid
grid:
  task: [toy]
  model:
    - {family: rnn, cell: gru}
    - {family: transformer, attention: multihead}
  seed: [0]
model: {d_model: 16, n_layers: 1, n_heads: 2, dropout: 0.0}
train: {epochs: 2, batch_size: 16, lr: 3.0e-3, log_every: 1, save_checkpoint: false}
tasks:
  toy: {n_train: 48}
"""


def invoke(workdir, uri, *args, grid=GRID):
    write_grid(workdir / "g.yaml", grid)
    return CliRunner().invoke(app, ["run", "g.yaml", "--tracking-uri", uri, "--plugin", "attnbench_test_plugins", *args])


def runs_of(uri, experiment="toygrid"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(Tag.ROLE) == "parent"]
    children = [r for r in runs if r.data.tags.get(Tag.ROLE) == "child"]
    return client, parents, children


def test_run_logs_parent_and_nested_children_by_the_conventions(workdir, tracking_uri):
    result = invoke(workdir, tracking_uri)
    assert result.exit_code == 0, result.output
    client, parents, children = runs_of(tracking_uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert "grid.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "toygrid" in parent.data.tags["mlflow.note.content"]
    assert sorted(r.info.run_name for r in children) == ["toy/gru/s0", "toy/multihead/s0"]
    for child in children:
        tags, metrics, params = child.data.tags, child.data.metrics, child.data.params
        assert child.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags[Tag.TASK] == "toy" and tags[Tag.KIND] == "classification"
        assert tags[Tag.PRIMARY_METRIC] == "accuracy" and len(tags[Tag.RUN_KEY]) == 16
        assert tags[Tag.DESCRIPTION].startswith(f"task toy, model {tags[Tag.MODEL]} (family ")
        assert tags[Tag.ATTENTION] == ("none" if tags[Tag.FAMILY] == "rnn" else "multihead")
        # what the plugins declare: the rnn family is the baseline, the toy task logs percent
        assert tags[Tag.BASELINE] == ("true" if tags[Tag.FAMILY] == "rnn" else "false")
        assert tags[Tag.METRIC_SCALE] == "100"
        # what computed the figures: the torch build and the processor's kernels
        assert tags[Tag.ENV + "torch"] == torch.__version__ and tags[Tag.ENV + "cpu"]
        assert tags[Tag.ENV + "cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert params["train.lr"] == "0.003" and params["model.family"] == tags[Tag.FAMILY]
        for key in ("train/loss", "val/accuracy", "test/accuracy", "perf/params", "perf/train_tokens_per_s",
                    "perf/wall_s", "perf/peak_mem_mib"):
            assert key in metrics, key
        val = client.get_metric_history(child.info.run_id, "val/accuracy")
        assert [m.step for m in val] == [1, 2]  # one value per epoch
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 6  # 3 steps x 2 epochs
        preds = client.download_artifacts(child.info.run_id, "predictions.jsonl", str(workdir))
        rows = [json.loads(line) for line in open(preds)]
        assert len(rows) == 32 and {"id", "input", "prediction", "reference"} <= set(rows[0])
        recomputed = 100.0 * sum(r["prediction"] == r["reference"] for r in rows) / len(rows)
        assert recomputed == pytest.approx(metrics["test/accuracy"])
    assert "toy: test accuracy" in result.output and "attnbench ui" in result.output


def test_rerun_skips_finished_runs_and_retries_failed_ones(workdir, tracking_uri):
    assert invoke(workdir, tracking_uri).exit_code == 0
    again = invoke(workdir, tracking_uri)
    assert again.exit_code == 0
    assert again.output.count("already FINISHED") == 2
    _, parents, children = runs_of(tracking_uri)
    assert len(parents) == 2 and len(children) == 2
    # a changed setting is a new run key: trained again
    third = invoke(workdir, tracking_uri, "--set", "train.lr=0.002")
    assert third.exit_code == 0 and "already FINISHED" not in third.output
    assert len(runs_of(tracking_uri)[2]) == 4


def test_failing_pairing_is_recorded_and_the_grid_goes_on(workdir, tracking_uri):
    grid = GRID.replace("task: [toy]", "task: [toy_failing, toy]")
    result = invoke(workdir, tracking_uri, grid=grid)
    assert result.exit_code == 1
    assert "2 of 4 runs FAILED" in result.output and "toy task asked to fail in loss" in result.output
    client, parents, children = runs_of(tracking_uri)
    status = {r.info.run_name: r.info.status for r in children}
    assert status == {"toy_failing/gru/s0": "FAILED", "toy_failing/multihead/s0": "FAILED",
                      "toy/gru/s0": "FINISHED", "toy/multihead/s0": "FINISHED"}
    failed = next(r for r in children if r.info.status == "FAILED")
    tb = open(client.download_artifacts(failed.info.run_id, "traceback.txt", str(workdir))).read()
    assert "ValueError: toy task asked to fail in loss" in tb
    assert parents[0].info.status == "FAILED"
    # re-running retries the FAILED ones and skips the FINISHED ones
    again = invoke(workdir, tracking_uri, grid=grid)
    assert again.output.count("already FINISHED") == 2 and again.exit_code == 1


def test_failure_in_prepare_stops_the_grid_in_preflight(workdir, tracking_uri):
    """Data problems show in the preflight, before any run exists (exit 2)."""
    result = invoke(workdir, tracking_uri, "--set", "tasks.toy.fail_at=prepare")
    assert result.exit_code == 2 and "toy task asked to fail in prepare" in result.output
    assert "preflight (nothing was trained)" in result.output
    assert MlflowClient(tracking_uri).get_experiment_by_name("toygrid") is None


def test_nan_loss_fails_the_run(workdir, tracking_uri):
    result = invoke(workdir, tracking_uri, "--set", "tasks.toy.fail_at=nan")
    assert result.exit_code == 1
    _, _, children = runs_of(tracking_uri)
    assert all(r.info.status == "FAILED" for r in children)
    assert "train/loss became nan" in children[0].data.tags[Tag.ERROR]


def test_ctrl_c_marks_current_and_parent_killed_and_exits_130(workdir, tracking_uri):
    result = invoke(workdir, tracking_uri, "--set", "tasks.toy.fail_at=interrupt")
    assert result.exit_code == 130
    assert "interrupted" in result.output and "Traceback" not in result.output
    _, parents, children = runs_of(tracking_uri)
    assert parents[0].info.status == "KILLED"
    assert [r.info.status for r in children] == ["KILLED"]


def test_same_config_same_metrics(workdir, tracking_uri):
    assert invoke(workdir, tracking_uri, "--set", "name=repro_a").exit_code == 0
    assert invoke(workdir, tracking_uri, "--set", "name=repro_b").exit_code == 0
    a = {r.info.run_name: r.data.metrics for r in runs_of(tracking_uri, "repro_a")[2]}
    b = {r.info.run_name: r.data.metrics for r in runs_of(tracking_uri, "repro_b")[2]}
    for name in a:
        for key in ("train/loss", "val/accuracy", "test/accuracy", "perf/params"):
            assert a[name][key] == b[name][key], (name, key)


def test_unwritable_tracking_location_is_a_clear_error(workdir):
    blocker = workdir / "afile"
    blocker.write_text("not a folder")
    result = invoke(workdir, f"sqlite:///{blocker}/sub/mlflow.db")
    assert result.exit_code == 2
    assert "is not writable" in result.output and "--tracking-uri" in result.output


def test_tracking_uri_precedence(workdir, monkeypatch):
    from attnbench.run.tracking import resolve_tracking_uri

    (workdir / "mlflow.yaml").write_text("tracking_uri: sqlite:///from_yaml.db\n")
    assert resolve_tracking_uri() == f"sqlite:///{workdir / 'from_yaml.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from_env.db")
    assert resolve_tracking_uri() == f"sqlite:///{workdir / 'from_env.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5999") == "http://127.0.0.1:5999"


def test_bad_mlflow_yaml_is_reported(workdir):
    from attnbench.errors import BadInputError
    from attnbench.run.tracking import load_tracking_config

    (workdir / "mlflow.yaml").write_text("tracking_url: sqlite:///x.db\n")
    with pytest.raises(BadInputError, match="tracking_url: unknown field; valid: tracking_uri"):
        load_tracking_config()


def test_evaluate_with_reevaluates_with_changed_attention_options(workdir, tracking_uri, plugin_dist):
    from test_plugins import example_plugin_source

    plugin_dist("attnbench-example-plugin", {"attnbench_example_plugin": example_plugin_source()},
                {"linear": "attnbench_example_plugin"})
    grid = GRID.replace("attention: multihead", "attention: linear") + """
evaluate_with:
  - {name: big_eps, attention_options: {eps: 1000.0}}
  - {name: lsh8, attention_options: {n_hashes: 8}}
"""
    result = invoke(workdir, tracking_uri, grid=grid)
    assert result.exit_code == 0, result.output
    client, _, children = runs_of(tracking_uri)
    linear = next(r for r in children if r.info.run_name == "toy/linear/s0")
    rnn = next(r for r in children if r.info.run_name == "toy/gru/s0")
    m = linear.data.metrics
    assert m["test_big_eps/attention_modules_changed"] == 1  # one layer, one linear attention
    assert m["test_lsh8/attention_modules_changed"] == 0  # linear has no n_hashes: unchanged
    assert m["test_lsh8/accuracy"] == m["test/accuracy"]
    assert rnn.data.metrics["test_big_eps/attention_modules_changed"] == 0
    assert "evaluate_with" in linear.data.params
    # compare prints the trained-with x evaluated-with matrix for such grids
    shown = CliRunner().invoke(app, ["compare", "g.yaml", "--tracking-uri", tracking_uri, "--no-significance", "--no-log"])
    assert shown.exit_code == 0, shown.output
    matrix = shown.output[shown.output.index("trained with"):]  # the header cell is never wrapped
    assert "as trained" in matrix and "big_eps" in matrix and "lsh8" in matrix
    assert "transformer-linear" in matrix


def test_attention_options_override_restores_options():
    import torch

    from test_plugins import example_plugin_source
    from attnbench.config.eval_override import attention_options_override

    namespace: dict = {}
    exec(compile(example_plugin_source(), "example", "exec"), namespace)
    attn = namespace["LinearAttention"](8, 2)
    model = torch.nn.Sequential(attn)
    with attention_options_override(model, {"eps": 0.5}) as changed:
        assert changed == 1 and attn.options.eps == 0.5
    assert attn.options.eps == 1e-6
