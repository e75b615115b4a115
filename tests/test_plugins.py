"""Plugin discovery: built-ins via entry points, third-party distributions, --plugin, the
ATTNBENCH_PLUGINS allow-list, and broken plugins reported without breaking the rest."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnbench.cli import app
from attnbench.errors import BadInputError
from attnbench.plugin_host import discover
from attnbench.run.record import CHILD_FILTER, Tag

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "attnbench-example-plugin"


def example_plugin_source() -> str:
    return (EXAMPLE / "attnbench_example_plugin.py").read_text()


def test_builtins_register_through_the_entry_point_group():
    host = discover()
    for name in ("multihead",):
        assert host.attention.get(name).plugin == f"attnbench (attnbench.plugins.attention.{name})"
    assert {"transformer", "rnn"} <= set(host.model.names())
    assert not [f for f in host.failures if f.plugin.startswith("attnbench (")], host.failures


def test_example_distribution_is_discovered_by_its_entry_point(plugin_dist):
    plugin_dist("attnbench-example-plugin", {"attnbench_example_plugin": example_plugin_source()},
                {"linear": "attnbench_example_plugin"})
    host = discover()
    reg = host.attention.get("linear")
    assert reg.plugin == "attnbench-example-plugin (attnbench_example_plugin)"
    assert reg.factory.__name__ == "LinearAttention"


def test_allow_list_limits_third_party_plugins_but_keeps_builtins(plugin_dist, monkeypatch):
    plugin_dist("attnbench-example-plugin", {"attnbench_example_plugin": example_plugin_source()},
                {"linear": "attnbench_example_plugin"})
    monkeypatch.setenv("ATTNBENCH_PLUGINS", "")
    host = discover()
    assert "linear" not in host.attention and "multihead" in host.attention
    monkeypatch.setenv("ATTNBENCH_PLUGINS", "some-other, attnbench-example-plugin")
    assert "linear" in discover().attention


def test_plugin_module_flag_loads_a_module_by_path():
    host = discover(["attnbench_test_plugins"])
    assert host.task.get("toy").plugin == "--plugin (attnbench_test_plugins)"


def test_plugin_that_fails_to_import_is_reported_and_the_rest_work(plugin_dist):
    plugin_dist("broken-dist", {"broken_mod": "raise RuntimeError('kaboom at import')\n"}, {"broken": "broken_mod"})
    host = discover()
    failure = next(f for f in host.failures if f.plugin.startswith("broken-dist"))
    assert failure.stage == "import" and "kaboom at import" in failure.error
    assert "multihead" in host.attention


def test_plugin_whose_hook_raises_is_reported(plugin_dist):
    source = """
        from attnbench import hookimpl
        @hookimpl
        def register_tasks(register):
            raise ValueError('hook exploded')
    """
    plugin_dist("hook-dist", {"hook_mod": source}, {"hook": "hook_mod"})
    host = discover()
    failure = next(f for f in host.failures if f.plugin.startswith("hook-dist"))
    assert failure.stage == "register_tasks" and "hook exploded" in failure.error


def test_duplicate_name_is_rejected_naming_both_plugins(plugin_dist):
    source = """
        from attnbench import hookimpl
        from attnbench.plugins.attention.multihead import MultiHeadAttention
        @hookimpl
        def register_attention(register):
            register("multihead", MultiHeadAttention)
    """
    plugin_dist("dup-dist", {"dup_mod": source}, {"dup": "dup_mod"})
    host = discover()
    failure = next(f for f in host.failures if f.plugin.startswith("dup-dist"))
    assert "duplicate attention name 'multihead'" in failure.error
    assert "attnbench (attnbench.plugins.attention.multihead)" in failure.error
    assert "dup-dist (dup_mod)" in failure.error
    assert host.attention.get("multihead").plugin.startswith("attnbench (")


def test_wrong_base_class_is_rejected(plugin_dist):
    source = """
        from attnbench import hookimpl
        @hookimpl
        def register_attention(register):
            register("notamodule", dict)
    """
    plugin_dist("bad-base", {"bad_base": source}, {"bad": "bad_base"})
    host = discover()
    assert "must be a subclass of attnbench.attention.Attention" in next(
        f for f in host.failures if f.plugin.startswith("bad-base")).error
    assert "notamodule" not in host.attention


def test_unknown_name_suggests_the_closest():
    host = discover()
    with pytest.raises(BadInputError, match="did you mean 'multihead'"):
        host.attention.get("mutlihead")


def test_cli_plugins_lists_everything_and_failures_as_json(plugin_dist):
    plugin_dist("broken-dist", {"broken_mod": "import no_such_module_xyz\n"}, {"broken": "broken_mod"})
    result = CliRunner().invoke(app, ["plugins", "--json", "--plugin", "attnbench_test_plugins"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert "multihead" in [a["name"] for a in data["attention"]]
    assert {"name": "toy", "plugin": "--plugin (attnbench_test_plugins)",
            "factory": "attnbench_test_plugins.ToyTask",
            "details": "classification; primary metric accuracy"} in data["task"]
    assert any("no_such_module_xyz" in f["error"] for f in data["failed"])


def test_cli_plugins_table_shows_plugin_and_failures(plugin_dist, monkeypatch):
    from attnbench.cli import common as cli

    monkeypatch.setattr(cli.console, "_width", 200)  # a wide terminal: no folded cells
    plugin_dist("broken-dist", {"broken_mod": "raise ImportError('missing dep')\n"}, {"broken": "broken_mod"})
    result = CliRunner().invoke(app, ["plugins"])
    assert result.exit_code == 0
    assert "(attnbench.plugins.attention.multihead)" in result.output  # under its distribution
    assert "plugins that failed to load" in result.output and "missing dep" in result.output


# ---------------------------------------------------------------- one test per hook (tests/test_docs.py checks)

def test_hook_register_attention(plugin_dist):
    """A third-party attention variant plugs into the built-in transformer family."""
    import torch

    from attnbench import ModelDims, TaskIO

    plugin_dist("attnbench-example-plugin", {"attnbench_example_plugin": example_plugin_source()},
                {"linear": "attnbench_example_plugin"})
    host = discover()
    family_cls = host.model.get("transformer").factory
    family = family_cls(family_cls.parse_options({"attention": "linear"}))
    family.validate(host)
    model = family.build(TaskIO(kind="classification", vocab_size=20, max_len=10, n_classes=3),
                         ModelDims(d_model=16, n_layers=1, n_heads=2, dropout=0.0), host)
    linear_cls = host.attention.get("linear").factory
    assert any(isinstance(m, linear_cls) for m in model.modules())
    tokens = torch.randint(1, 20, (2, 10))
    assert model(tokens, torch.zeros(2, 10, dtype=torch.bool)).shape == (2, 3)


BOW_FAMILY = """
    import torch
    from pydantic import BaseModel, ConfigDict
    from torch import nn
    from attnbench import ModelFamily, hookimpl

    class BowOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class BagOfWords(nn.Module):
        def __init__(self, vocab, classes, width):
            super().__init__()
            self.embed = nn.EmbeddingBag(vocab, width)
            self.head = nn.Linear(width, classes)
        def forward(self, tokens, padding_mask):
            return self.head(self.embed(tokens))

    class BowFamily(ModelFamily):
        kinds = ("classification",)
        Options = BowOptions
        def label(self):
            return "bow"
        def build(self, io, dims, host):
            return BagOfWords(io.vocab_size, io.n_classes, dims.d_model)

    @hookimpl
    def register_models(register):
        register("bow", BowFamily)
"""


def test_hook_register_models(plugin_dist, workdir, tracking_uri):
    """A third-party model family is validated, trained and tracked like the built-ins."""
    from mlflow.tracking import MlflowClient

    from conftest import write_grid

    plugin_dist("bow-dist", {"bow_family": BOW_FAMILY}, {"bow": "bow_family"})
    write_grid(workdir / "g.yaml", """
        name: bowgrid
        grid: {task: [toy], model: [{family: bow}], seed: [0]}
        model: {d_model: 8}
        train: {epochs: 1, batch_size: 16, save_checkpoint: false}
    """)
    result = CliRunner().invoke(app, ["run", "g.yaml", "--tracking-uri", tracking_uri, "--plugin", "attnbench_test_plugins"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("bowgrid").experiment_id],
                              CHILD_FILTER)
    assert [r.info.run_name for r in runs] == ["toy/bow/s0"]
    assert runs[0].data.tags[Tag.FAMILY] == "bow" and "test/accuracy" in runs[0].data.metrics
    # a family that cannot build the task's kind is rejected before anything trains
    write_grid(workdir / "h.yaml", """
        name: bowgrid2
        grid: {task: [toy], model: [{family: bow, depth: 3}], seed: [0]}
    """)
    bad = CliRunner().invoke(app, ["run", "h.yaml", "--tracking-uri", tracking_uri, "--plugin", "attnbench_test_plugins"])
    assert bad.exit_code == 2 and "grid.model[0].depth: unknown field" in bad.output


def test_a_third_party_family_can_be_the_baseline(plugin_dist, workdir, tracking_uri):
    """A family that declares ``is_baseline`` is logged as such and compare measures the
    other models against it: nothing in core knows the built-in rnn is the usual baseline."""
    from mlflow.tracking import MlflowClient

    from attnbench.compare import compare_experiment
    from attnbench.plugin_host import get_host
    from conftest import write_grid

    source = BOW_FAMILY.replace('        kinds = ("classification",)', '        kinds = ("classification",)\n        is_baseline = True')
    plugin_dist("bow-base-dist", {"bow_baseline_family": source}, {"bow": "bow_baseline_family"})
    write_grid(workdir / "g.yaml", """
        name: bowbase
        grid: {task: [toy], model: [{family: bow}, {family: transformer, attention: multihead}], seed: [0]}
        model: {d_model: 8, n_layers: 1, n_heads: 2}
        train: {epochs: 1, batch_size: 16, save_checkpoint: false}
    """)
    result = CliRunner().invoke(app, ["run", "g.yaml", "--tracking-uri", tracking_uri, "--plugin", "attnbench_test_plugins"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("bowbase").experiment_id], CHILD_FILTER)
    assert {r.data.tags[Tag.MODEL]: r.data.tags[Tag.BASELINE] for r in runs} == {
        "bow": "true", "transformer-multihead": "false"}
    [toy] = compare_experiment(client, "bowbase", host=get_host(["attnbench_test_plugins"])).tasks
    assert toy.baseline == "bow" and toy.rows[0].model == "bow" and toy.rows[0].is_baseline
    transformer = toy.rows[1]
    base = toy.rows[0].metrics["test/accuracy"].mean
    assert transformer.delta == pytest.approx(transformer.metrics["test/accuracy"].mean - base)
    assert transformer.p_value is not None and 0 < transformer.p_value <= 1  # the toy task's declared test
    # the command line finds the task's declared test through --plugin, as `run` found the task
    shown = CliRunner().invoke(app, ["compare", "--experiment", "bowbase", "--format", "json", "--no-log",
                                     "--tracking-uri", tracking_uri, "--plugin", "attnbench_test_plugins"])
    assert shown.exit_code == 0, shown.output
    [task] = json.loads(shown.stdout)["tasks"]
    assert task["baseline"] == "bow" and task["rows"][1]["p_value"] == pytest.approx(transformer.p_value)


def test_hook_register_tasks(tmp_path):
    """A task registered by a plugin prepares data, yields batches and computes a loss."""
    import torch

    from attnbench import ModelDims

    host = discover(["attnbench_test_plugins"])
    reg = host.task.get("toy")
    assert reg.factory.kind == "classification" and reg.factory.primary_metric == "accuracy"
    task = reg.factory(reg.factory.parse_options({"n_train": 20}, "tasks.toy"), cache_dir=tmp_path)
    io = task.prepare()
    family_cls = host.model.get("rnn").factory
    model = family_cls(family_cls.parse_options({})).build(io, ModelDims(d_model=8, n_layers=1), host)
    batch = next(iter(task.batches("train", 8, shuffle=True, generator=torch.Generator().manual_seed(0))))
    loss = task.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert task.num_batches("train", 8) == 3
