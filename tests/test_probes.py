"""Long-range probe tasks (duplication, listops, reverse) and the trained-with x evaluated-with matrix."""

import csv
import io
import json
import math
import re
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from typer.testing import CliRunner

from attnbench import ModelDims
from attnbench.cli import app
from attnbench.compare.matrix import AS_TRAINED, eval_matrices
from attnbench.config import TrainConfig
from attnbench.data import EOS, SEP
from attnbench.errors import BadInputError
from attnbench.plugin_host import discover
from attnbench.plugins.tasks import duplication, listops, reverse
from attnbench.run.training import fit
from attnbench.run.record import Tag

from conftest import REPO, write_grid

torch.set_num_threads(1)
DIMS = ModelDims(d_model=16, n_layers=1, n_heads=2, dropout=0.0)
CPU = torch.device("cpu")


def make(task_cls, **raw):
    return task_cls(task_cls.parse_options(raw, f"tasks.{task_cls.__name__}"), cache_dir="unused")


def build(task, family, **options):
    host = discover()
    cls = host.model.get(family).factory
    torch.manual_seed(0)
    return cls(cls.parse_options(options)).build(task.prepare(), DIMS, host)


# ------------------------------------------------------------------------------ duplication


class CopyFromHalfBack(nn.Module):
    """A causal oracle for '0 w 0 w': at position p it predicts the token at ``p + 1 - L/2 + shift``.

    ``shift = 0`` is the right answer for every second-half position and nonsense before;
    ``shift = -1`` is off by one everywhere."""

    def __init__(self, vocab: int, shift: int = 0):
        super().__init__()
        self.vocab, self.shift = vocab, shift

    def forward(self, tokens, padding_mask=None):
        b, n = tokens.shape
        source = (torch.arange(n) + 1 - n // 2 + self.shift).clamp(min=0)
        return nn.functional.one_hot(tokens[:, source], self.vocab).float() * 20.0


def test_duplication_sequences_are_0w0w_and_deterministic():
    a = duplication.generate(30, seq_len=16, vocab=5, seed=3, split="train")
    assert torch.equal(a, duplication.generate(30, seq_len=16, vocab=5, seed=3, split="train"))
    assert not torch.equal(a, duplication.generate(30, seq_len=16, vocab=5, seed=4, split="train"))
    assert not torch.equal(a, duplication.generate(30, seq_len=16, vocab=5, seed=3, split="test"))
    assert a.shape == (30, 16)
    assert (a[:, 0] == SEP).all() and (a[:, 8] == SEP).all()
    assert torch.equal(a[:, 1:8], a[:, 9:])
    symbols = torch.cat([a[:, 1:8], a[:, 9:]])
    assert symbols.min() >= duplication.FIRST_SYMBOL and symbols.max() < duplication.FIRST_SYMBOL + 5


def test_duplication_accuracy_counts_the_second_half_only():
    task = make(duplication.DuplicationTask, seq_len=32, vocab=6, n_train=8, n_validation=8, n_test=40)
    vocab = task.prepare().vocab_size
    right = task.evaluate(CopyFromHalfBack(vocab), "test", batch_size=16, device=CPU)
    # The oracle is wrong on nearly every first-half position, so counting them would show.
    assert right.metrics == {"accuracy": 1.0, "sequence_accuracy": 1.0}
    off_by_one = task.evaluate(CopyFromHalfBack(vocab, shift=-1), "test", batch_size=16, device=CPU).metrics
    data = task.data["test"]
    half = 16
    expected = (data[:, half:31] == data[:, half + 1:32]).float().mean().item()  # repeats are right by luck
    assert off_by_one["accuracy"] == pytest.approx(expected) and off_by_one["accuracy"] < 0.4
    rows = right.predictions
    assert len(rows) == 40 and rows[0]["prediction"] == rows[0]["reference"] and len(rows[0]["reference"].split()) == 15


def test_duplication_loss_is_on_the_second_half_unless_asked():
    oracle = CopyFromHalfBack(6 + duplication.FIRST_SYMBOL)
    second = make(duplication.DuplicationTask, seq_len=32, vocab=6, n_train=16)
    everywhere = make(duplication.DuplicationTask, seq_len=32, vocab=6, n_train=16, loss_on="all")
    batch = next(second.batches("train", 16, shuffle=False))
    everywhere.prepare()
    assert second.loss(oracle, batch).item() < 1e-6
    assert everywhere.loss(oracle, batch).item() > 1.0


def test_duplication_rejects_an_odd_length():
    with pytest.raises(BadInputError, match=r"tasks.duplication.seq_len.*even"):
        duplication.DuplicationTask.parse_options({"seq_len": 63}, "tasks.duplication")


# --------------------------------------------------------------------------------- listops


def python_value(tokens: list[str]) -> int:
    """An independent oracle: rewrite the expression as Python and evaluate it."""
    code = " ".join(tokens)
    for op, fn in (("[MAX", "max("), ("[MIN", "min("), ("[MED", "med("), ("[SM", "sm(")):
        code = code.replace(op, fn)
    code = re.sub(r"(\d|\)) (?=[\dms])", r"\1, ", code.replace("]", ")"))

    def med(*xs):
        xs = sorted(xs)
        mid = len(xs) // 2
        return xs[mid] if len(xs) % 2 else math.trunc((xs[mid - 1] + xs[mid]) / 2)

    return eval(code, {"max": lambda *x: max(x), "min": lambda *x: min(x), "med": med, "sm": lambda *x: sum(x) % 10})


def operand_counts(tokens: list[str]) -> list[int]:
    counts, stack = [], []
    for token in tokens:
        if token in listops.OPERATORS:
            if stack:
                stack[-1] += 1
            stack.append(0)
        elif token == listops.CLOSE:
            counts.append(stack.pop())
        elif stack:
            stack[-1] += 1
    return counts


def test_listops_generator_is_deterministic_and_labels_are_the_values():
    opts = listops.ListOpsOptions(min_length=20, max_length=120, max_depth=4, max_args=5, seed=7)
    rows = listops.generate(150, opts, "train")
    assert rows == listops.generate(150, opts, "train")
    assert rows != listops.generate(150, opts.model_copy(update={"seed": 8}), "train")
    for row in rows:
        assert 20 <= len(row["tokens"]) <= 120
        assert row["label"] == python_value(row["tokens"])
        assert 1 <= row["depth"] <= 4
        assert 2 <= min(operand_counts(row["tokens"])) and max(operand_counts(row["tokens"])) <= 5
    lengths = [len(r["tokens"]) for r in rows]
    assert max(lengths) > 100 and min(lengths) < 40  # the whole range is covered
    assert len({r["label"] for r in rows}) == 10


class ValueOracle(nn.Module):
    """Reads the expression back from ids and answers with its value, except for long inputs."""

    def __init__(self, wrong_above: int):
        super().__init__()
        self.wrong_above = wrong_above

    def forward(self, tokens, padding_mask):
        out = torch.zeros(tokens.shape[0], 10)
        for i, (ids, pad) in enumerate(zip(tokens.tolist(), padding_mask.tolist())):
            words = [listops.VOCAB[t] for t, p in zip(ids, pad) if not p]
            value = python_value(words)
            out[i, value if len(words) <= self.wrong_above else (value + 1) % 10] = 1.0
        return out


def test_listops_accuracy_per_length_bucket():
    task = make(listops.ListOpsTask, min_length=10, max_length=80, max_depth=4, length_buckets=[40],
                n_train=8, n_validation=8, n_test=120)
    metrics = task.evaluate(ValueOracle(wrong_above=40), "test", batch_size=32, device=CPU).metrics
    short = sum(len(r["tokens"]) <= 40 for r in task.examples["test"])
    assert metrics["acc_len_10_40"] == 1.0 and metrics["acc_len_41_80"] == 0.0
    assert metrics["accuracy"] == pytest.approx(short / 120)


def test_listops_batches_group_similar_lengths_and_cover_every_example():
    task = make(listops.ListOpsTask, min_length=10, max_length=200, n_train=300)
    seen, widths = [], []
    for batch in task.batches("train", 10, shuffle=True, generator=torch.Generator().manual_seed(0)):
        seen += batch.ids
        lengths = (~batch["padding_mask"]).sum(1)
        widths.append((lengths.max() - lengths.min()).item())
    assert sorted(seen) == sorted(r["id"] for r in task.examples["train"])
    assert sum(widths) / len(widths) < 20  # random batches would span ~150 tokens
    assert task.num_batches("train", 10) == len(widths)


def test_listops_rejects_impossible_lengths():
    with pytest.raises(BadInputError, match="max_depth"):
        listops.ListOpsTask.parse_options({"min_length": 40, "max_depth": 2, "max_args": 3}, "tasks.listops")
    with pytest.raises(BadInputError, match="min_length"):
        listops.ListOpsTask.parse_options({"min_length": 90, "max_length": 50}, "tasks.listops")


# --------------------------------------------------------------------------------- reverse


def test_reverse_targets_and_permutations():
    opts = reverse.ReverseOptions(min_len=3, max_len=12, vocab=4, mode="permutation", seed=5)
    train, test = reverse.generate(60, opts, "train"), reverse.generate(60, opts, "test")
    assert train == reverse.generate(60, opts, "train") and train != test
    for row in train + test:
        perm = reverse.permutation(len(row["source"]), 5)
        assert sorted(perm) == list(range(len(row["source"])))
        assert row["target"] == [row["source"][i] for i in perm]  # same permutation in every split
    rows = reverse.generate(60, opts.model_copy(update={"mode": "reverse"}), "train")
    assert all(r["target"] == r["source"][::-1] for r in rows)
    assert {len(r["source"]) for r in rows} == set(range(3, 13))


class ReverseOracle(nn.Module):
    """A seq2seq 'model' that outputs the reversed source, wrong at the first token of long sources."""

    def __init__(self, vocab: int, wrong_above: int):
        super().__init__()
        self.vocab, self.wrong_above = vocab, wrong_above

    def encode(self, src, src_padding_mask):
        return (src, src_padding_mask)

    def reorder_memory(self, memory, index):
        return (memory[0].index_select(0, index), memory[1].index_select(0, index))

    def decode(self, memory, src_padding_mask, prefix):
        src, mask = memory
        logits = torch.zeros(prefix.shape[0], prefix.shape[1], self.vocab)
        for i in range(prefix.shape[0]):
            answer = src[i][~mask[i]].flip(0).tolist() + [EOS]
            if len(answer) - 1 > self.wrong_above:
                answer[0] = reverse.FIRST_SYMBOL + (answer[0] - reverse.FIRST_SYMBOL + 1) % 3
            for t in range(prefix.shape[1]):
                logits[i, t, answer[min(t, len(answer) - 1)]] = 1.0
        return logits


def test_reverse_accuracy_per_token_sequence_and_length_bucket():
    task = make(reverse.ReverseTask, min_len=4, max_len=23, vocab=3, bucket_width=10, n_train=8, n_test=80)
    io = task.prepare()
    assert task.options.buckets() == [(4, 13), (14, 23)]
    evaluation = task.evaluate(ReverseOracle(io.vocab_size, wrong_above=13), "test", batch_size=16, device=CPU)
    rows = task.examples["test"]
    long = [r for r in rows if len(r["source"]) > 13]
    m = evaluation.metrics
    assert m["acc_len_4_13"] == 1.0
    assert m["acc_len_14_23"] == pytest.approx(1 - len(long) / sum(len(r["target"]) for r in long))
    assert m["sequence_accuracy"] == pytest.approx(1 - len(long) / 80)
    assert m["accuracy"] == pytest.approx(1 - len(long) / sum(len(r["target"]) for r in rows))
    assert evaluation.predictions[0]["reference"] == " ".join(str(t - 5) for t in rows[0]["target"])


def test_reverse_buckets_merge_a_thin_last_bucket():
    assert reverse.ReverseOptions().buckets()[-1] == (90, 100)
    assert len(reverse.ReverseOptions().buckets()) == 9


# ------------------------------------------------------------- a few training steps each


@pytest.mark.parametrize("task_cls, raw", [
    (duplication.DuplicationTask, {"seq_len": 16, "vocab": 4, "n_train": 32, "n_validation": 8, "n_test": 8}),
    (listops.ListOpsTask, {"min_length": 8, "max_length": 40, "n_train": 32, "n_validation": 8, "n_test": 8}),
    (reverse.ReverseTask, {"min_len": 2, "max_len": 8, "vocab": 4, "n_train": 32, "n_validation": 8, "n_test": 8}),
])
@pytest.mark.parametrize("family, options", [("transformer", {"attention": "lsh", "attention_options": {"bucket_size": 4}}),
                                             ("transformer", {"attention": "multihead"}), ("rnn", {"cell": "gru"})])
def test_a_few_training_steps_on_every_probe(task_cls, raw, family, options):
    task = make(task_cls, **raw)
    model = build(task, family, **options)
    before = [p.detach().clone() for p in model.parameters()]
    logged = {}
    result = fit(task, model, TrainConfig(epochs=1, batch_size=8, max_steps=3, lr=1e-2), seed=0, device=CPU,
                 log_metric=lambda k, v, s: logged.__setitem__(k, v))
    assert result.steps == 3 and math.isfinite(logged["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert 0.0 <= result.test.metrics["accuracy"] <= 1.0 and "val/accuracy" in logged


# ------------------------------------------------------- evaluate_with and the matrix


DUPLICATION_GRID = """
name: dupgrid
grid:
  task: [duplication]
  model:
    - {family: transformer, attention: lsh, attention_options: {n_buckets: 1, n_hashes: 1}, label: full}
    - {family: transformer, attention: lsh, attention_options: {n_buckets: 4, n_hashes: 1}, label: lsh-1}
  seed: [0, 1]
model: {d_model: 16, n_layers: 1, n_heads: 2, dropout: 0.0}
train: {epochs: 1, batch_size: 8, lr: 3.0e-3, save_checkpoint: false}
tasks:
  duplication: {seq_len: 32, vocab: 4, n_train: 24, n_validation: 8, n_test: 16}
evaluate_with:
  - {name: lsh2, attention_options: {n_buckets: 4, n_hashes: 2}}
  - {name: full, attention_options: {n_buckets: 1}}
"""


@pytest.fixture(scope="module")
def duplication_runs(tmp_path_factory, migrated_store):
    """One tiny duplication grid with evaluate_with, trained once for the matrix tests."""
    root = tmp_path_factory.mktemp("dupgrid")
    shutil.copyfile(migrated_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("ATTNBENCH_CACHE", str(root / "cache"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        write_grid(root / "dup.yaml", DUPLICATION_GRID)
        result = CliRunner().invoke(app, ["run", "dup.yaml", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    return client, client.get_experiment_by_name("dupgrid")


def test_matrix_from_client_runs(duplication_runs):
    client, experiment = duplication_runs
    runs = client.search_runs([experiment.experiment_id])
    [matrix] = eval_matrices(runs)
    assert matrix.task == "duplication" and matrix.metric == "accuracy"
    assert matrix.rows == ["full", "lsh-1"]
    assert matrix.columns == [AS_TRAINED, "lsh2", "full"]  # grid order, not alphabetical
    children = [r for r in runs if r.data.tags.get(Tag.ROLE) == "child"]
    for row in matrix.rows:
        mine = [r for r in children if r.data.tags[Tag.MODEL] == row]
        assert len(mine) == 2  # two seeds averaged
        for column, key in ((AS_TRAINED, "test/accuracy"), ("lsh2", "test_lsh2/accuracy"), ("full", "test_full/accuracy")):
            assert matrix.value(row, column) == pytest.approx(sum(r.data.metrics[key] for r in mine) / 2)
    # A model evaluated with exactly its training options scores what it scored as trained.
    assert matrix.value("full", "full") == pytest.approx(matrix.value("full", AS_TRAINED))
    assert "trained with" in matrix.to_markdown() and matrix.to_table().row_count == 2


def test_the_comparison_carries_the_matrices_into_every_format(duplication_runs, tmp_path):
    """The matrices live in the Comparison, so json, csv, markdown, --out and the parent's
    summary/ all have them (not only the terminal table)."""
    from attnbench.compare import compare_experiment, render
    from attnbench.compare.report import write_report

    client, experiment = duplication_runs
    comparison = compare_experiment(client, "dupgrid", with_significance=False)
    [from_comparison] = comparison.matrices
    [from_client] = eval_matrices(client.search_runs([experiment.experiment_id]))
    assert from_comparison.rows == from_client.rows and from_comparison.columns == from_client.columns
    for key, stat in from_client.cells.items():
        assert from_comparison.cells[key].mean == pytest.approx(stat.mean)
    assert from_comparison.in_percent  # duplication declares accuracy as a fraction (scale 1)

    data = json.loads(render.render(comparison, "json"))
    [matrix] = data["matrices"]
    assert matrix["columns"] == [AS_TRAINED, "lsh2", "full"]
    cell = next(c for c in matrix["cells"] if c["trained_with"] == "lsh-1" and c["evaluated_with"] == "lsh2")
    assert cell["metric"] == "test_lsh2/accuracy" and cell["mean"] == pytest.approx(from_client.value("lsh-1", "lsh2"))
    rows = list(csv.DictReader(io.StringIO(render.render(comparison, "csv"))))
    lsh = next(r for r in rows if r["model"] == "lsh-1")
    assert float(lsh["test_lsh2/accuracy_mean"]) == pytest.approx(from_client.value("lsh-1", "lsh2"))
    assert "trained with" in render.render(comparison, "markdown")
    assert "evaluated with" in render.render(comparison, "table")
    write_report(comparison, tmp_path)
    assert json.loads((tmp_path / "comparison.json").read_text())["matrices"] == data["matrices"]
    assert "trained with" in (tmp_path / "comparison.md").read_text()


def test_no_matrix_without_evaluate_with(workdir, tracking_uri):
    grid = DUPLICATION_GRID.split("evaluate_with:")[0].replace("seed: [0, 1]", "seed: [0]")
    write_grid(workdir / "plain.yaml", grid.replace("name: dupgrid", "name: plain"))
    assert CliRunner().invoke(app, ["run", "plain.yaml", "--tracking-uri", tracking_uri]).exit_code == 0
    client = MlflowClient(tracking_uri)
    assert eval_matrices(client.search_runs([client.get_experiment_by_name("plain").experiment_id])) == []


def test_matrix_from_compare_records(duplication_runs):
    from attnbench.compare.read import fetch_child_runs

    client, experiment = duplication_runs
    records = fetch_child_runs(client, experiment.experiment_id)
    [matrix] = eval_matrices(records)
    assert matrix.columns == [AS_TRAINED, "lsh2", "full"]  # grid order, from the evaluate_with param
    [reference] = eval_matrices(client.search_runs([experiment.experiment_id]))
    assert all(matrix.value(r, c) == pytest.approx(reference.value(r, c)) for r in matrix.rows for c in matrix.columns)
    for record in records:
        record.params = {}
    [unordered] = eval_matrices(records)
    assert unordered.columns == [AS_TRAINED, "full", "lsh2"]  # no evaluate_with param: natural order


@pytest.mark.parametrize("name", ["reformer_duplication", "length_effect", "efficiency"])
def test_probe_experiment_files_expand(name):
    from attnbench.config import expand_grid, load_experiment

    path = REPO / "experiments" / f"{name}.yaml"
    experiment, _ = load_experiment(path)
    specs = expand_grid(experiment, discover(), source=str(path))
    assert len(specs) == len(experiment.grid.model) * len(experiment.grid.task) >= 3
    if name == "reformer_duplication":  # the overrides switch between full and LSH buckets
        assert {e.name for e in experiment.evaluate_with} == {"full", "lsh1", "lsh2", "lsh4", "lsh8"}
        assert all("n_buckets" in s.family_options.attention_options for s in specs)
