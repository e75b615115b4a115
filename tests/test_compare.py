"""attnbench compare: runs built directly in a temporary MLflow SQLite store, read back and summarised."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import typer
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from attnbench import compare
from attnbench import significance
from attnbench.compare import render as compare_format
from attnbench.cli.compare import compare as compare_command
from attnbench.errors import BadInputError
from attnbench.run.record import Tag
from synthetic_runs import create_parent, log_child_run

SEEDS = (0, 1, 2)


def store_client(folder, migrated_store):
    """A client on a copy of the session's migrated SQLite store (migrating one costs ~10 s)."""
    shutil.copyfile(migrated_store, folder / "mlflow.db")
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, migrated_store):
    """One experiment "quick": sentiment with a weak and a strong rnn, a strong and a middling
    transformer and failed runs; translation with a baseline and a strong transformer."""
    root = tmp_path_factory.mktemp("mlruns")
    client = store_client(root, migrated_store)
    exp = client.create_experiment("quick", artifact_location=str(root / "artifacts"))
    parent = create_parent(client, exp, "quick", "name: quick\n")
    for seed in SEEDS:
        log_child_run(client, exp, parent, task="sentiment", model="rnn-lstm", seed=seed, skill=0.55)
        log_child_run(client, exp, parent, task="sentiment", model="rnn-gru", seed=seed, skill=0.6)
        log_child_run(client, exp, parent, task="sentiment", model="transformer-multihead", seed=seed, skill=0.95)
        log_child_run(client, exp, parent, task="sentiment", model="transformer-vanilla", seed=seed, skill=0.62)
    log_child_run(client, exp, parent, task="sentiment", model="transformer-vanilla", seed=3, status="FAILED")
    log_child_run(client, exp, parent, task="sentiment", model="transformer-lsh", seed=0, status="KILLED")
    # A failed first attempt that a re-run finished: superseded, not reported.
    log_child_run(client, exp, parent, task="sentiment", model="transformer-sparse", seed=0, status="FAILED")
    log_child_run(client, exp, parent, task="sentiment", model="transformer-sparse", seed=0, skill=0.7)
    for seed in (0, 1):
        log_child_run(client, exp, parent, task="translation", model="rnn-lstm", seed=seed, skill=0.4, n_examples=60)
        log_child_run(client, exp, parent, task="translation", model="transformer-multihead", seed=seed,
                      skill=0.9, n_examples=60)
    client.set_terminated(parent)
    second = create_parent(client, exp, "quick")
    log_child_run(client, exp, second, task="sentiment", model="rnn-lstm", seed=7, skill=0.5)
    client.set_terminated(second)
    return client, exp, parent, second


@pytest.fixture(scope="module")
def summary(grid):
    client, *_ = grid
    return compare.compare_experiment(client, "quick")


def task(summary, name):
    return next(t for t in summary.tasks if t.task == name)


def row(task_summary, model):
    return next(r for r in task_summary.rows if r.model == model)


def logged(client, run_ids, metric):
    return [client.get_run(rid).data.metrics[metric] for rid in run_ids]


def test_fetch_uses_one_search_query(grid, monkeypatch):
    client, exp, *_ = grid
    calls = []
    original = client.search_runs
    monkeypatch.setattr(client, "search_runs", lambda *a, **k: calls.append(k) or original(*a, **k))
    records = compare.fetch_child_runs(client, exp)
    assert len(calls) == 1
    assert Tag.ROLE in calls[0]["filter_string"]
    assert len(records) == 3 * 4 + 4 + 4 + 1  # every child, failed ones included


def test_mean_and_std_over_seeds_match_the_logged_metrics(grid, summary):
    client, *_ = grid
    sentiment = task(summary, "sentiment")
    multihead = row(sentiment, "transformer-multihead")
    assert multihead.n == 3 + 0 and multihead.seeds == [0, 1, 2]
    values = logged(client, multihead.run_ids, "test/accuracy")
    stat = multihead.metrics["test/accuracy"]
    assert stat.mean == pytest.approx(np.mean(values))
    assert stat.std == pytest.approx(np.std(values, ddof=1))
    assert stat.n == 3
    speed = logged(client, multihead.run_ids, "perf/train_tokens_per_s")
    assert multihead.perf["tokens_per_s"].mean == pytest.approx(np.mean(speed))


def test_baseline_is_the_best_rnn_and_deltas_are_differences_of_means(summary):
    sentiment = task(summary, "sentiment")
    lstm, gru = row(sentiment, "rnn-lstm"), row(sentiment, "rnn-gru")
    best = max((lstm, gru), key=lambda r: r.metrics["test/accuracy"].mean)
    assert sentiment.baseline == best.model and best.is_baseline
    assert sentiment.rows[0] is best
    base = best.metrics["test/accuracy"].mean
    for r in sentiment.rows:
        if r is not best:
            assert r.delta == pytest.approx(r.metrics["test/accuracy"].mean - base)
            assert not r.is_baseline


def test_markdown_tabulates_bleu_by_source_length(summary):
    text = compare_format.render(summary, "markdown")
    translation = task(summary, "translation")
    names = compare.summary.bucket_names(translation, "bleu")
    assert names and all(n.startswith("test/bleu_len_") for n in names)
    header = "| model | " + " | ".join(compare.summary.bucket_label(n) for n in names) + " |"
    assert header in text
    multihead = row(translation, "transformer-multihead")
    first = multihead.buckets[names[0]]
    assert f"| transformer-multihead | {first.mean:.2f} ± {first.std:.2f} |" in text


def test_a_chosen_baseline_replaces_the_no_attention_one_where_a_task_has_it(grid):
    client, *_ = grid
    chosen = compare.compare_experiment(client, "quick", reference="transformer-vanilla")
    sentiment, translation = task(chosen, "sentiment"), task(chosen, "translation")
    vanilla = row(sentiment, "transformer-vanilla")
    assert sentiment.baseline == "transformer-vanilla" and vanilla.is_baseline and sentiment.rows[0] is vanilla
    multihead = row(sentiment, "transformer-multihead")
    assert multihead.delta == pytest.approx(multihead.metrics["test/accuracy"].mean
                                            - vanilla.metrics["test/accuracy"].mean)
    assert not row(sentiment, "rnn-lstm").is_baseline and row(sentiment, "rnn-lstm").p_value is not None
    assert translation.baseline == "rnn-lstm"  # no transformer-vanilla there: its declared baseline stays
    assert "transformer-vanilla (chosen with --baseline)" in compare_format.render(chosen, "markdown")
    with pytest.raises(BadInputError, match="--baseline: no finished run of model 'nope'.*rnn-gru"):
        compare.compare_experiment(client, "quick", reference="nope")


def test_p_values_are_probabilities_and_a_strong_model_is_significant(summary):
    for t in summary.tasks:
        for r in t.rows:
            if not r.is_baseline:
                assert r.p_value is not None and 0.0 < r.p_value <= 1.0, (t.task, r.model)
                assert r.significant == (r.p_value < significance.ALPHA)
    assert row(task(summary, "sentiment"), "transformer-multihead").significant
    translation = task(summary, "translation")
    assert "sacrebleu" in translation.significance_method
    assert row(translation, "transformer-multihead").significant


def test_failed_and_killed_runs_are_listed_and_never_averaged(summary):
    listed = {(r.task, r.model, r.seed, r.status) for r in summary.unfinished}
    assert listed == {("sentiment", "transformer-vanilla", 3, "FAILED"), ("sentiment", "transformer-lsh", 0, "KILLED")}
    sentiment = task(summary, "sentiment")
    assert row(sentiment, "transformer-vanilla").n == 3
    assert "transformer-lsh" not in {r.model for r in sentiment.rows}
    assert row(sentiment, "transformer-sparse").n == 1
    assert summary.superseded == 1


def test_run_option_limits_to_one_parent(grid):
    client, _, _, second = grid
    only = compare.compare_experiment(client, "quick", parent_run_id=second)
    assert [(t.task, [r.model for r in t.rows]) for t in only.tasks] == [("sentiment", ["rnn-lstm"])]
    assert only.tasks[0].rows[0].seeds == [7]


def test_bootstrap_p_value_separates_equal_from_different_scores():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.6
    assert significance.bootstrap_p_value(a, a) > 0.5
    assert significance.bootstrap_p_value(np.ones(200), a) < 0.01
    with pytest.raises(ValueError):
        significance.bootstrap_p_value([1.0], [1.0, 0.0])


def test_alignment_pairs_by_seed_and_example_id():
    sample = significance.align({0: {"a": {"p": 1}, "b": {"p": 2}}, 1: {"a": {"p": 3}}},
                                {0: {"b": {"p": 4}, "c": {"p": 5}}, 2: {"a": {"p": 6}}})
    assert sample.keys == [(0, "b")]
    assert sample.system == [{"p": 2}] and sample.baseline == [{"p": 4}]


def test_each_format_parses(summary):
    data = json.loads(compare_format.render(summary, "json"))
    assert {t["task"] for t in data["tasks"]} == {"sentiment", "translation"}
    assert {r["status"] for r in data["unfinished"]} == {"FAILED", "KILLED"}
    assert {r["error"] for r in data["unfinished"]} == {"RuntimeError: synthetic failure", ""}

    rows = list(csv.DictReader(io.StringIO(compare_format.render(summary, "csv"))))
    assert len(rows) == sum(len(t.rows) for t in summary.tasks)
    mh = next(r for r in rows if r["task"] == "sentiment" and r["model"] == "transformer-multihead")
    assert float(mh["test/accuracy_mean"]) == pytest.approx(row(task(summary, "sentiment"), "transformer-multihead").metrics["test/accuracy"].mean)
    assert 0 < float(mh["p_value"]) <= 1 and mh["significant"] == "True"

    md = compare_format.render(summary, "markdown")
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    header_cells = {line.count("|") for line in table_lines if "model" in line and "test/" in line}
    assert len(header_cells) >= 1
    killed = next(r for r in summary.unfinished if r.status == "KILLED")
    assert killed.run_id in md and "KILLED" in md

    text = compare_format.render(summary, "table")
    assert "transformer-multihead" in text and "baseline" in text and "*" in text

    with pytest.raises(BadInputError, match="--format"):
        compare_format.render(summary, "xml")


def cli_app():
    app = typer.Typer()
    app.command()(compare_command)
    return app


def test_command_writes_files_and_logs_the_summary_to_the_parent(grid, tmp_path):
    client, exp, parent, second = grid
    uri = client._tracking_client.tracking_uri
    result = CliRunner().invoke(cli_app(), ["--experiment", "quick", "--format", "json", "--out", str(tmp_path),
                                            "--tracking-uri", uri, "--run", parent])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["parent_run_id"] == parent
    for name in ("comparison.md", "comparison.csv", "comparison.json", "unfinished.csv", "quality_vs_speed.png",
                 "bleu_by_length.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    logged_files = {f.path for f in client.list_artifacts(parent, "summary")}
    assert {"summary/comparison.md", "summary/comparison.csv", "summary/quality_vs_speed.png"} <= logged_files


def test_unknown_experiment_and_missing_target_are_bad_input(grid, tmp_path, monkeypatch):
    client, *_ = grid
    monkeypatch.chdir(tmp_path)  # no experiments/quick.yaml here
    with pytest.raises(BadInputError, match="no MLflow experiment named 'nope'.*quick"):
        compare.compare_experiment(client, "nope")
    with pytest.raises(BadInputError, match="--run"):
        compare.fetch_child_runs(client, "1", "not-a-run-id!")
    result = CliRunner().invoke(cli_app(), [])
    assert result.exit_code == 2 and "experiments/quick.yaml: not found" in result.output
    result = CliRunner().invoke(cli_app(), ["--experiment", "quick", "--format", "xml"])
    assert result.exit_code == 2 and "table, markdown, csv, json" in result.output


def test_qa_significance_uses_the_squad_metric(tmp_path, migrated_store):
    client = store_client(tmp_path, migrated_store)
    exp = client.create_experiment("qa-grid", artifact_location=str(tmp_path / "artifacts"))
    parent = create_parent(client, exp, "qa-grid")
    for seed in (0, 1):
        log_child_run(client, exp, parent, task="qa", model="rnn-lstm", seed=seed, skill=0.3)
        log_child_run(client, exp, parent, task="qa", model="transformer-multihead", seed=seed, skill=0.9)
    qa = compare.compare_experiment(client, "qa-grid").tasks[0]
    strong = row(qa, "transformer-multihead")
    assert strong.p_value is not None and strong.significant


def test_grid_file_names_the_experiment(grid, tmp_path):
    client, *_ = grid
    grid_file = tmp_path / "quick.yaml"
    grid_file.write_text("name: quick\ngrid:\n  task: [sentiment]\n  model: [{family: rnn, cell: lstm}]\n")
    result = CliRunner().invoke(cli_app(), [str(grid_file), "--format", "csv", "--no-log", "--no-significance",
                                            "--tracking-uri", client._tracking_client.tracking_uri])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["task"] for r in rows} == {"sentiment", "translation"}
    assert all(r["p_value"] == "" for r in rows)
    missing = CliRunner().invoke(cli_app(), [str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output


def test_run_record_reads_the_declarations_and_falls_back_for_older_runs():
    from types import SimpleNamespace

    from attnbench.run.record import RunRecord, child_tags

    def run(tags):
        return SimpleNamespace(info=SimpleNamespace(run_id="r", run_name="n", status="FINISHED", artifact_uri="",
                                                    start_time=1),
                               data=SimpleNamespace(tags=tags, metrics={}, params={"evaluate_with": "[]"}))

    tags = child_tags(parent_run_id="p", grid="g", task="t", kind="seq2seq", family="f", model="m", seed=0,
                      run_key="k", primary_metric="bleu", greater_is_better=True, metric_scale=100, baseline=True)
    record = RunRecord.from_mlflow(run(tags))
    assert record.baseline and record.metric_scale == 100.0 and record.params == {"evaluate_with": "[]"}
    # runs logged before the declarations were tags: no scale, and no attention meant baseline
    older = {k: v for k, v in tags.items() if k not in (Tag.BASELINE, Tag.METRIC_SCALE)}
    assert RunRecord.from_mlflow(run(older | {Tag.ATTENTION: "none"})).baseline
    assert not RunRecord.from_mlflow(run(older | {Tag.ATTENTION: "multihead"})).baseline
    assert RunRecord.from_mlflow(run(older)).metric_scale is None


def test_trivial_baselines_are_reference_rows_outside_ranking_and_tests(tmp_path, migrated_store):
    """Scores a task computed from the data alone (test/trivial_<name>_<metric>) are no model:
    one pooled row per baseline under the models, in the model metrics' columns."""
    from attnbench.run.record import trivial_metric

    client = store_client(tmp_path, migrated_store)
    exp = client.create_experiment("qa-trivial", artifact_location=str(tmp_path / "artifacts"))
    parent = create_parent(client, exp, "qa-trivial")
    trivial = {trivial_metric("overlap_sentence", "f1"): 21.5, trivial_metric("overlap_sentence", "exact_match"): 0.35,
               trivial_metric("first_words", "f1"): 5.73, trivial_metric("first_words", "exact_match"): 2.16}
    for seed in (0, 1):
        for model, skill in (("rnn-lstm", 0.3), ("transformer-multihead", 0.9)):
            run_id = log_child_run(client, exp, parent, task="qa", model=model, seed=seed, skill=skill)
            for name, value in trivial.items():
                client.log_metric(run_id, "test/" + name, value)
    qa = compare.compare_experiment(client, "qa-trivial").tasks[0]

    assert [r.model for r in qa.rows] == ["rnn-lstm", "transformer-multihead"] and qa.baseline == "rnn-lstm"
    assert all(not m.startswith("test/trivial_") for r in qa.rows for m in r.metrics)
    assert qa.metric_names() == ["test/f1", "test/exact_match"]
    assert set(qa.trivial_baselines) == {"overlap_sentence", "first_words"}
    pooled = qa.trivial_baselines["overlap_sentence"]["test/f1"]
    assert (pooled.mean, pooled.std, pooled.n) == (pytest.approx(21.5), pytest.approx(0.0), 4)
    assert row(qa, "transformer-multihead").significant  # the test still runs against the LSTM

    summary = compare.compare_experiment(client, "qa-trivial")
    text = compare_format.render(summary, "table")
    line = next(ln for ln in text.splitlines() if "trivial: overlap_sentence" in ln)
    assert "21.50" in line and "0.35" in line and "±" not in line
    assert "neither ranked nor tested" in text
    md = compare_format.render(summary, "markdown")
    md_line = next(ln for ln in md.splitlines() if "trivial: first_words" in ln)
    header = next(ln for ln in md.splitlines() if ln.startswith("| model"))
    assert md_line.count("|") == header.count("|") and "5.73" in md_line
    rows = list(csv.DictReader(io.StringIO(compare_format.render(summary, "csv"))))
    assert [float(r["test/trivial_first_words_f1_mean"]) for r in rows] == pytest.approx([5.73, 5.73])
    data = json.loads(compare_format.render(summary, "json"))
    assert data["tasks"][0]["trivial_baselines"]["first_words"]["test/exact_match"]["mean"] == pytest.approx(2.16)


def test_footnote_names_what_computed_the_runs_and_warns_when_that_differs():
    from attnbench.compare.summary import summarize
    from attnbench.run.record import RunRecord, env_tags

    def finished(seed, cpu, capability):
        tags = {Tag.ROLE: "child", **env_tags({"torch": "2.13.0+cpu", "cpu": cpu, "cpu_capability": capability})}
        return RunRecord(run_id=f"run{seed}", name=f"lstm-{seed}", status="FINISHED", task="sentiment",
                         kind="classification", family="rnn", attention="none", model="rnn-lstm", seed=seed,
                         run_key=f"key{seed}", primary_metric="accuracy", greater_is_better=True,
                         metrics={"test/accuracy": 0.5 + seed / 10}, artifact_uri="", parent_run_id="p", tags=tags)

    one = summarize([finished(0, "AMD EPYC", "AVX2"), finished(1, "AMD EPYC", "AVX2")], experiment="e",
                    with_significance=False)
    assert not one.mixed_environments
    assert compare_format.footnote(one).endswith("Computed with torch 2.13.0+cpu, AMD EPYC (AVX2).")
    two = summarize([finished(0, "AMD EPYC", "AVX2"), finished(1, "Intel Xeon", "AVX512")], experiment="e",
                    with_significance=False)
    assert two.mixed_environments and two.environments == {"torch 2.13.0+cpu, AMD EPYC (AVX2)": 1,
                                                          "torch 2.13.0+cpu, Intel Xeon (AVX512)": 1}
    note = compare_format.footnote(two)
    assert "Runs from 2 environments" in note and "Intel Xeon (AVX512) (1 runs)" in note
    assert json.loads(compare_format.to_json(two))["environments"] == two.environments
    older = finished(2, "AMD EPYC", "AVX2")
    older.tags = {Tag.ROLE: "child"}  # logged before the env tags existed
    mixed = summarize([finished(0, "AMD EPYC", "AVX2"), older], experiment="e", with_significance=False)
    assert not mixed.mixed_environments
    assert compare_format.footnote(mixed).endswith("AMD EPYC (AVX2) (1 run(s) logged before attnbench recorded it).")


def test_kernel_switches_are_part_of_the_environment(monkeypatch):
    # MKL_ENABLE_INSTRUCTIONS & co. change the digits on the same processor: runs under them are another environment
    import torch

    from attnbench.run.environment import KERNEL_SWITCHES, environment
    from attnbench.run.record import RunRecord, env_tags

    for name in KERNEL_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    assert "kernel_switches" not in environment(torch.device("cpu"))
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    env = environment(torch.device("cpu"))
    assert env["kernel_switches"] == "MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2"

    def record(environment_tags):
        return RunRecord(run_id="r", name="n", status="FINISHED", task="t", kind="classification", family="rnn",
                         attention="none", model="rnn-lstm", seed=0, run_key="k", primary_metric="accuracy",
                         greater_is_better=True, metrics={}, artifact_uri="", parent_run_id="p",
                         tags={Tag.ROLE: "child", **env_tags(environment_tags)})

    plain = {"torch": "2.13.0+cpu", "cpu": "AMD EPYC", "cpu_capability": "AVX2"}
    assert record(plain).environment == "torch 2.13.0+cpu, AMD EPYC (AVX2)"
    capped = record(plain | {"kernel_switches": env["kernel_switches"]}).environment
    assert capped == "torch 2.13.0+cpu, AMD EPYC (AVX2) under MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2"
