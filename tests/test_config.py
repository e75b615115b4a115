"""Experiment files: validation, --set overrides, grid expansion and clear errors (exit 2)."""

import pytest
from typer.testing import CliRunner

from attnbench.cli import app
from attnbench.config import apply_override, expand_grid, load_experiment
from attnbench.errors import BadInputError
from attnbench.plugin_host import discover

from conftest import write_grid

GRID = """
name: toygrid
grid:
  task: [toy]
  model:
    - {family: rnn, cell: lstm}
    - {family: transformer, attention: multihead}
  seed: [0, 1]
model: {d_model: 16, n_layers: 1, n_heads: 2, dropout: 0.0}
train: {epochs: 1, batch_size: 16, lr: 1.0e-3, max_steps: null}
tasks:
  toy: {n_train: 32}
"""


@pytest.fixture
def host():
    return discover(["attnbench_test_plugins"])


def test_grid_is_the_cartesian_product(tmp_path, host):
    experiment, _ = load_experiment(write_grid(tmp_path / "g.yaml", GRID))
    specs = expand_grid(experiment, host)
    assert [s.run_name for s in specs] == [
        "toy/lstm/s0", "toy/lstm/s1",
        "toy/multihead/s0", "toy/multihead/s1",
    ]
    assert len({s.run_key for s in specs}) == 4
    params = specs[2].params()
    assert params["model.attention"] == "multihead" and params["train.lr"] == "0.001"
    assert params["task.n_train"] == "32" and params["model.d_model"] == "16"


def test_set_overrides_any_field_and_changes_the_run_key(tmp_path, host):
    path = write_grid(tmp_path / "g.yaml", GRID)
    base = expand_grid(load_experiment(path)[0], host)
    over = expand_grid(load_experiment(path, ["train.max_steps=20", "grid.model.0.cell=gru", "tasks.toy.seq_len=8"])[0], host)
    assert over[0].train.max_steps == 20 and over[0].run_name == "toy/gru/s0"
    assert over[0].task_options.seq_len == 8
    assert base[2].run_key != over[2].run_key
    # cosmetic settings do not force re-runs
    cosmetic = expand_grid(load_experiment(path, ["train.log_every=3"])[0], host)
    assert cosmetic[0].run_key == base[0].run_key


def test_per_entry_dims_and_labels(tmp_path, host):
    text = GRID.replace("{family: rnn, cell: lstm}", "{family: rnn, cell: lstm, d_model: 24, label: small-rnn}")
    specs = expand_grid(load_experiment(write_grid(tmp_path / "g.yaml", text))[0], host)
    assert specs[0].run_name == "toy/small-rnn/s0" and specs[0].dims.d_model == 24
    assert specs[2].dims.d_model == 16


@pytest.mark.parametrize("text, override, expected", [
    (GRID.replace("batch_size: 16", "batchsize: 16"), [], "train.batchsize: unknown field; valid: epochs, batch_size"),
    (GRID, ["train.nope=1"], "train.nope: unknown field"),
    (GRID.replace("epochs: 1", "epochs: zero"), [], "train.epochs: Input should be a valid integer"),
    (GRID.replace("name: toygrid\n", ""), [], "name: required field missing"),
    (GRID, ["train.epochs.deep=1"], "train.epochs is a value"),
    (GRID, ["grid.model.5.cell=gru"], "no list item 5"),
    (GRID, ["novalue"], "expected key.path=value"),
])
def test_bad_input_names_the_field(tmp_path, text, override, expected):
    with pytest.raises(BadInputError) as err:
        load_experiment(write_grid(tmp_path / "g.yaml", text), override)
    assert expected in str(err.value)
    assert "g.yaml" in str(err.value) or "--set" in str(err.value)


def test_unknown_plugin_names_get_a_suggestion(tmp_path, host):
    text = GRID.replace("attention: multihead", "attention: mutlihead").replace("task: [toy]", "task: [toy, sentimnet]")
    experiment, _ = load_experiment(write_grid(tmp_path / "g.yaml", text))
    with pytest.raises(BadInputError) as err:
        expand_grid(experiment, host, source="g.yaml")
    msg = str(err.value)
    assert "did you mean 'multihead'" in msg and "grid.model[1]" in msg
    assert "unknown task 'sentimnet'" in msg
    assert "valid:" in msg


def test_unknown_family_option_is_reported(tmp_path, host):
    text = GRID.replace("cell: lstm", "cell: lstm, cells: 3")
    with pytest.raises(BadInputError, match=r"grid.model\[0\].cells: unknown field"):
        expand_grid(load_experiment(write_grid(tmp_path / "g.yaml", text))[0], host)


def test_unknown_task_option_is_reported(tmp_path, host):
    with pytest.raises(BadInputError, match=r"tasks.toy.n_trian: unknown field"):
        expand_grid(load_experiment(write_grid(tmp_path / "g.yaml", GRID), ["tasks.toy.n_trian=5"])[0], host)


TWO_TASKS = GRID.replace("task: [toy]", "task: [toy, toy_failing]").replace(
    "  toy: {n_train: 32}", "  toy: {n_train: 32}\n  toy_failing: {n_train: 32, fail_at: never}")


def test_a_task_can_have_its_own_training_budget(tmp_path, host):
    path = write_grid(tmp_path / "g.yaml", TWO_TASKS)
    base = expand_grid(load_experiment(path)[0], host)
    own = expand_grid(load_experiment(path, ["tasks.toy_failing.train.epochs=3",
                                             "tasks.toy_failing.train.group_by_length=true"])[0], host)
    for before, after in zip(base, own):
        if after.task == "toy":  # the other task keeps the grid's train, and its runs' keys
            assert after.train == before.train and after.run_key == before.run_key
        else:
            assert (after.train.epochs, after.train.group_by_length, after.train.lr) == (3, True, 1e-3)
            assert after.run_key != before.run_key
            assert after.params()["train.epochs"] == "3"
    assert own[-1].task_options.fail_at == "never"  # `train` is not passed on as a task option


@pytest.mark.parametrize("override, expected", [
    ("tasks.toy.train.threads=2", "tasks.toy.train.threads: set for the whole grid only (train.threads)"),
    ("tasks.toy.train.device=cpu", "tasks.toy.train.device: set for the whole grid only"),
    ("tasks.toy.train.epoch=2", "tasks.toy.train.epoch: unknown field; valid: epochs,"),
    ("tasks.toy.train.epochs=0", "tasks.toy.train.epochs: "),
    ("tasks.toy.train=6", "tasks.toy.train: expected a mapping of train fields"),
    ("tasks.toy.trian.epochs=2", "tasks.toy.trian: unknown field; valid: "),
])
def test_bad_task_training_budget_names_the_field(tmp_path, host, override, expected):
    path = write_grid(tmp_path / "g.yaml", GRID)
    with pytest.raises(BadInputError) as info:
        expand_grid(load_experiment(path, [override])[0], host)
    assert expected in str(info.value)
    if "trian" in override:
        assert str(info.value).rstrip().endswith(", train")


def test_override_parses_yaml_values():
    data = {"train": {"max_steps": None}, "grid": {"task": ["a"]}}
    apply_override(data, "train.max_steps=20")
    apply_override(data, "grid.task=[a, b]")
    apply_override(data, "train.lr=3e-4")
    assert data["train"]["max_steps"] == 20 and data["grid"]["task"] == ["a", "b"]
    assert data["train"]["lr"] == pytest.approx(3e-4)


def test_cli_dry_run_lists_runs_and_trains_nothing(workdir):
    write_grid(workdir / "g.yaml", GRID)
    result = CliRunner().invoke(app, ["run", "g.yaml", "--dry-run", "--plugin", "attnbench_test_plugins"])
    assert result.exit_code == 0, result.output
    assert "4 runs" in result.output and "toy/multihead/s1" in result.output
    assert not (workdir / "mlflow.db").exists()


def test_cli_dry_run_shows_a_tasks_own_budget(workdir):
    write_grid(workdir / "g.yaml", TWO_TASKS)
    result = CliRunner().invoke(app, ["run", "g.yaml", "--dry-run", "--plugin", "attnbench_test_plugins",
                                      "--set", "tasks.toy_failing.train.epochs=5"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "every run: epochs=1" in result.output and "toy_failing: epochs=5" in result.output


@pytest.mark.parametrize("content, args, expected", [
    ("name: x\ngrid: [a\n", [], "malformed YAML at line"),
    (GRID.replace("attention: multihead", "attention: mutlihead"), [], "did you mean 'multihead'"),
    (GRID, ["--set", "train.nope=1"], "train.nope: unknown field"),
    (GRID, ["--device", "tpu"], "--device 'tpu': valid: auto, cpu, cuda"),
])
def test_cli_bad_input_exits_2_with_a_message(workdir, content, args, expected):
    write_grid(workdir / "g.yaml", content)
    result = CliRunner().invoke(app, ["run", "g.yaml", "--plugin", "attnbench_test_plugins", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_cli_missing_file(workdir):
    result = CliRunner().invoke(app, ["run", "nope.yaml"])
    assert result.exit_code == 2 and "nope.yaml: no such experiment file" in result.output
