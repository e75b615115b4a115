"""``attnbench bench`` on tiny shapes: JSON rows, MLflow runs and metrics, flag validation."""

import json

import mlflow
import pytest
from typer.testing import CliRunner

from attnbench.bench import BenchSpec, growth_exponent
from attnbench.errors import BadInputError
from attnbench.run.record import Tag


def bench_app():
    import typer

    from attnbench.cli.bench import bench

    app = typer.Typer()
    app.command()(bench)
    app.command("noop")(lambda: None)  # two commands keep typer from flattening "bench"
    return app


def test_growth_exponent_recovers_a_power_law():
    ns = [512, 1024, 2048, 4096]
    assert growth_exponent(ns, [3e-6 * n ** 1.7 for n in ns]) == pytest.approx(1.7)
    assert growth_exponent([512], [1.0]) is None


def test_bench_json_and_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # mlflow.yaml's artifact location (./mlartifacts) is relative to here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(bench_app(), [
        "bench", "--attention", "sparse", "--lengths", "64,128", "--heads", "2", "--head-dim", "8",
        "--json", "--tracking-uri", uri, "--experiment", "bench-test",
    ])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {(r["variant"], r["n"]) for r in rows} == {(v, n) for v in ("sdpa", "sparse") for n in (64, 128)}
    for row in rows:
        assert row["ms"] > 0 and row["peak_mib"] >= 0 and row["heads"] == 2
        assert row["ratio_to_sdpa"] == pytest.approx(row["ms"] / next(
            r["ms"] for r in rows if r["variant"] == "sdpa" and r["n"] == row["n"]))
        assert isinstance(row["growth_exponent"], float)

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("bench-test")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags[Tag.ATTENTION] for r in runs) == ["sdpa", "sparse"]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "time_ms")
        assert sorted(m.step for m in history) == [64, 128]
        assert {"peak_mib", "ratio_to_sdpa", "growth_exponent"} <= set(run.data.metrics)
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["bench_loglog.png"]
        assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("spec, words", [
    (BenchSpec(variants=["multihed"], lengths=[64]), "did you mean 'multihead'"),
    (BenchSpec(variants=["lsh"], lengths=[0]), "--lengths"),
    (BenchSpec(variants=["lsh"], lengths=[64], dtype="float16"), "--dtype"),
    (BenchSpec(variants=["lsh"], lengths=[64], device="tpu"), "--device"),
    (BenchSpec(variants=["sparse"], lengths=[64], options={"sparse": {"window": -1}}), "options.sparse.window"),
])
def test_bad_bench_input_is_named(spec, words):
    from attnbench.plugin_host import get_host

    with pytest.raises(BadInputError, match=words):
        spec.validate(get_host())


def test_bad_lengths_flag_exits_with_a_message(tmp_path):
    result = CliRunner().invoke(bench_app(), ["bench", "--lengths", "64,abc", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2 and "--lengths" in result.output and "Traceback" not in result.output


def test_poor_fits_are_flagged():
    from attnbench.bench import BenchResult, Measurement, fit_r2

    ns = [512, 1024, 2048, 4096]
    assert fit_r2(ns, [3e-6 * n ** 1.7 for n in ns]) == pytest.approx(1.0)
    noisy = BenchResult(BenchSpec(variants=["x"], lengths=ns),
                        [Measurement("x", n, ms, 0.0) for n, ms in zip(ns, [9.0, 3.0, 8.0, 4.0])])
    clean = BenchResult(BenchSpec(variants=["x"], lengths=ns),
                        [Measurement("x", n, 1e-3 * n ** 2, 0.0) for n in ns])
    assert noisy.poor_fit("x") and noisy.rows()[0]["poor_fit"] is True
    assert not clean.poor_fit("x") and clean.rows()[0]["fit_r2"] == pytest.approx(1.0)


def test_cpu_peak_memory_counts_the_call_own_allocations():
    """A materialised n x n attention matrix must show up, even at small n (RSS deltas read 0)."""
    import torch

    from attnbench.bench import peak_allocated_bytes

    n = 512
    q = torch.randn(1, 2, n, 8, requires_grad=True)

    def step():
        (torch.softmax(q @ q.transpose(-1, -2), -1) @ q).sum().backward()

    step()
    peak = peak_allocated_bytes(step)
    assert peak >= 2 * n * n * 4  # at least the score matrix and its softmax, float32
    assert peak < 64 * 2 * n * n * 4


def test_bench_measures_a_third_party_variant_resolved_by_the_plugin_host(plugin_dist, tmp_path, monkeypatch):
    """The example distribution's ``linear`` (an entry point, not a built-in) is benchmarked."""
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "examples" / "attnbench-example-plugin" / "attnbench_example_plugin.py").read_text()
    plugin_dist("attnbench-example-plugin", {"attnbench_example_plugin": source}, {"linear": "attnbench_example_plugin"})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # mlflow.yaml's artifact location (./mlartifacts) is relative to here
    result = CliRunner().invoke(bench_app(), [
        "bench", "--attention", "linear", "--lengths", "32", "--heads", "2", "--head-dim", "8",
        "--json", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
    ])
    assert result.exit_code == 0, result.output
    rows = {json.loads(line)["variant"]: json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")}
    assert set(rows) == {"sdpa", "linear"} and rows["linear"]["ms"] > 0


def test_resolve_factory_follows_the_plugin_host():
    from attnbench.bench import resolve_factory

    spec = BenchSpec(variants=["toy"], lengths=[8], plugins=["attnbench_test_plugins"])
    assert resolve_factory("sdpa", spec) is None
    assert resolve_factory("sparse", spec) == "attnbench.plugins.attention.sparse:SparseAttention"
    with pytest.raises(BadInputError, match="unknown attention 'linearr'"):
        resolve_factory("linearr", spec)
