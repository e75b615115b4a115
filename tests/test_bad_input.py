"""Every bad input a new user can give ``attnbench run``: one table of (files, flags) -> exit code
and a fragment of the message.

Each case must exit 2 with a short message (no traceback, echoed values truncated) before
anything trains or is written to the store.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from attnbench.cli import app

GRID = """\
name: badgrid
grid:
  task: [toy]
  model:
    - {family: rnn, cell: gru}
    - {family: transformer, attention: multihead}
  seed: [0]
model: {d_model: 16, n_layers: 1, n_heads: 2, dropout: 0.0}
train: {epochs: 1, batch_size: 16, lr: 1.0e-3, save_checkpoint: false}
tasks:
  toy: {n_train: 32}
"""

ALIAS_BOMB = "name: bomb\n" + "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)) + "description: *a8\n"

SENTIMENT = """\
name: realdata
grid:
  task: [sentiment]
  model: [{family: rnn, cell: gru}]
model: {d_model: 16, n_layers: 1, n_heads: 2}
train: {epochs: 1, save_checkpoint: false}
tasks:
  sentiment: {data: {source: datasets, path: ./data}, tokenizer: {vocab_size: 40, min_frequency: 1}}
"""


def rows(*labels):
    return "".join(json.dumps({"sentence": f"text number {i} is fine", "label": y}) + "\n" for i, y in enumerate(labels))


GOOD = rows(0, 1, 0, 1)


def replace(old, new, text=GRID):
    assert old in text, old
    return text.replace(old, new)


# id, files (name -> text or bytes), extra flags, env, expected exit code, fragment of the message
CASES = [
    ("alias bomb", {"g.yaml": ALIAS_BOMB}, [], {}, 2, "expands to more than 100,000 values"),
    ("not UTF-8", {"g.yaml": GRID.encode() + b"# caf\xff\n"}, [], {}, 2, "not UTF-8 text (byte 0xff at line 12)"),
    ("duplicate key", {"g.yaml": GRID + "train: {epochs: 2}\n"}, [], {}, 2, "duplicate key 'train' at lines 9 and 12"),
    ("repeated seed", {"g.yaml": replace("seed: [0]", "seed: [0, 0]")}, [], {}, 2, "grid.seed: [0] listed more than once"),
    ("repeated task", {"g.yaml": replace("task: [toy]", "task: [toy, toy]")}, [], {}, 2, "grid.task: ['toy'] listed more than once"),
    ("identical models", {"g.yaml": replace("- {family: rnn, cell: gru}", "- {family: rnn, cell: gru}\n    - {family: rnn, cell: gru, label: gru2}")},
     [], {}, 2, "'rnn-gru' and 'gru2' are the same model"),
    ("name ..", {"g.yaml": replace("name: badgrid", "name: ..")}, [], {}, 2, "name: not a valid name; use 1-100 letters"),
    ("name with /", {"g.yaml": replace("name: badgrid", "name: a/b")}, [], {}, 2, "name: not a valid name"),
    ("label with /", {"g.yaml": replace("cell: gru}", "cell: gru, label: ../x}")}, [], {}, 2, "grid.model[0].label: '../x' is not a valid name"),
    ("unknown key in a model entry", {"g.yaml": replace("cell: gru}", "cell: gru, colour: red}")}, [], {}, 2,
     "grid.model[0].colour: unknown field; valid: cell, bidirectional"),
    ("model entry lists the dims keys", {"g.yaml": replace("cell: gru}", "cell: gru, colour: red}")}, [], {}, 2, "label, d_model, n_layers"),
    ("unknown key in task options", {"g.yaml": replace("toy: {n_train: 32}", "toy: {n_train: 32, nope: 1}")}, [], {}, 2,
     "tasks.toy.nope: unknown field; valid: n_train, seq_len, fail_at"),
    ("unknown key in data", {"g.yaml": SENTIMENT.replace("path: ./data}", "path: ./data, pth: x}")}, [], {}, 2,
     "tasks.sentiment.data.pth: unknown field; valid: source, path, name"),
    ("unknown attention option", {"g.yaml": replace("attention: multihead}", "attention: sparse, attention_options: {windw: 3}}")},
     [], {}, 2, "grid.model[1].attention_options.windw: unknown field; valid: "),
    ("lr inf", {"g.yaml": replace("lr: 1.0e-3", "lr: .inf")}, [], {}, 2, "train.lr: Input should be a finite number"),
    ("long bad value is truncated", {"g.yaml": replace("epochs: 1", "epochs: " + "x" * 5000)}, [], {}, 2,
     "train.epochs: Input should be a valid integer"),
    ("unknown task", {"g.yaml": replace("task: [toy]", "task: [tyo]")}, [], {}, 2, "grid.task[0]: unknown task 'tyo' (did you mean 'toy'?)"),
    ("exclude matching nothing", {"g.yaml": replace("seed: [0]", "seed: [0]\n  exclude: [{model: lstm}]")}, [], {}, 2,
     "grid.exclude[0]: matches no pairing"),
    ("--set on a value", {"g.yaml": GRID}, ["--set", "train.epochs.x=1"], {}, 2, "train.epochs is a value"),
    ("n_heads does not divide d_model", {"g.yaml": replace("n_heads: 2", "n_heads: 3")}, [], {}, 2,
     "model transformer-multihead on task toy: d_model (16) must be divisible by n_heads (3)"),
    ("model far too big", {"g.yaml": GRID}, ["--set", "model.d_model=40000", "--set", "model.n_heads=4"], {}, 2,
     "GiB limit; shrink model.d_model / n_layers, or raise the limit with --max-memory-gib"),
    ("prepare fails", {"g.yaml": replace("toy: {n_train: 32}", "toy: {n_train: 32, fail_at: prepare}")}, [], {}, 2,
     "tasks.toy: loading the data failed: RuntimeError: toy task asked to fail in prepare"),
    ("missing data path", {"g.yaml": SENTIMENT}, [], {}, 2, "tasks.sentiment.data.path: './data' does not exist"),
    ("corrupt JSONL line", {"g.yaml": SENTIMENT, "data/train.jsonl": GOOD + '{"sentence": "broken\n',
                            "data/validation.jsonl": GOOD, "data/test.jsonl": GOOD}, [], {}, 2, "data/train.jsonl line 5: not valid JSON ("),
    ("missing column", {"g.yaml": SENTIMENT, "data/train.jsonl": GOOD.replace('"sentence"', '"text"'),
                        "data/validation.jsonl": GOOD.replace('"sentence"', '"text"'),
                        "data/test.jsonl": GOOD.replace('"sentence"', '"text"')}, [], {}, 2, "tasks.sentiment.data.columns: dataset has no column(s) ['sentence']"),
    ("empty split", {"g.yaml": SENTIMENT, "data/train.jsonl": GOOD, "data/validation.jsonl": "", "data/test.jsonl": GOOD}, [], {}, 2,
     "data/validation.jsonl has no rows"),
    ("label out of range", {"g.yaml": SENTIMENT, "data/train.jsonl": GOOD, "data/validation.jsonl": rows(0, 5),
                            "data/test.jsonl": GOOD}, [], {}, 2, "split 'validation' has label 5 never seen in train"),
    ("unknown family under an allow-list", {"g.yaml": replace("family: rnn, cell: gru", "family: bow")}, [],
     {"ATTNBENCH_PLUGINS": "some-dist"}, 2, "ATTNBENCH_PLUGINS is set, so only the built-ins and some-dist are loaded"),
    ("--plugin that fails to import", {"g.yaml": GRID}, ["--plugin", "no_such_module_xyz"], {}, 2,
     "--plugin (no_such_module_xyz): cannot import: ModuleNotFoundError"),
    ("read-only artifact root", {"g.yaml": GRID, "afile": "", "mlflow.yaml": "artifact_location: ./afile/artifacts\n"}, [], {}, 2,
     "artifact location file://"),
    ("bad mlflow.yaml key", {"g.yaml": GRID, "mlflow.yaml": "artifact_locaton: x\n"}, [], {}, 2,
     "artifact_locaton: unknown field; valid: tracking_uri, artifact_location"),
    ("--device", {"g.yaml": GRID}, ["--device", "tpu"], {}, 2, "--device 'tpu': valid: auto, cpu, cuda"),
]
if not torch.cuda.is_available():
    CASES.append(("--device cuda without CUDA", {"g.yaml": GRID}, ["--device", "cuda"], {}, 2,
                  "--device: 'cuda' requested but torch sees no CUDA device"))


@pytest.mark.parametrize("files, flags, env, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_short_message_before_anything_is_written(workdir, monkeypatch, files, flags, env,
                                                                            code, fragment):
    for name, content in files.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the terminal width must not split the fragment
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["run", "g.yaml", "--plugin", "attnbench_test_plugins", *flags])
    output = " ".join(result.output.split())
    assert result.exit_code == code, result.output
    assert fragment in output, result.output
    assert "Traceback" not in result.output
    assert len(result.output) < 2500, f"{len(result.output)} characters"
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlartifacts").exists()
    assert not (workdir / "afile" / "artifacts").exists()


def test_alias_bomb_is_refused_without_expanding_it(tmp_path):
    import resource

    from attnbench.config import load_experiment
    from attnbench.errors import BadInputError

    (tmp_path / "g.yaml").write_text(ALIAS_BOMB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BadInputError, match="alias"):
        load_experiment(tmp_path / "g.yaml")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: well under 200 MiB


def test_merge_keys_may_override_without_being_duplicates(tmp_path):
    from attnbench.config import load_experiment

    text = GRID.replace("- {family: rnn, cell: gru}", "- &rnn {family: rnn, cell: gru}\n    - {<<: *rnn, cell: lstm}")
    (tmp_path / "g.yaml").write_text(text)
    experiment, _ = load_experiment(tmp_path / "g.yaml")
    assert [m.get("cell") for m in experiment.grid.model[:2]] == ["gru", "lstm"]
