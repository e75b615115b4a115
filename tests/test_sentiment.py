"""Sentiment task: generator determinism and labels, data loading, metrics, training."""

import gzip
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from typer.testing import CliRunner

from attnbench import ModelDims
from attnbench.cli import app
from attnbench.errors import BadInputError
from attnbench.plugin_host import discover
from attnbench.plugins.tasks import synthetic_sentiment
from attnbench.plugins.tasks.sentiment import SentimentTask
from attnbench.run.record import CHILD_FILTER, Tag

from conftest import write_grid

torch.set_num_threads(1)
DIMS = ModelDims(d_model=32, n_layers=1, n_heads=4, dropout=0.0)


def make_task(tmp_path, **raw):
    raw.setdefault("data", {"n_train": 300, "n_validation": 60, "n_test": 60})
    return SentimentTask(SentimentTask.parse_options(raw, "tasks.sentiment"), cache_dir=tmp_path)


def build(task, family_name, raw=None):
    host = discover()
    cls = host.model.get(family_name).factory
    torch.manual_seed(0)
    return cls(cls.parse_options(raw or {})).build(task.prepare(), DIMS, host)


def oracle_label(sentence: str) -> int:
    """Re-derive a generated sentence's label from its words, independently of the generator."""
    text = sentence.rstrip(" .")
    if " , even though " in text:
        clause = text.split(" , even though ")[0]
    elif text.startswith("although "):
        clause = text.split(" , ", 1)[1]
    else:
        clause = text
        for marker in (" , but ", " , yet ", " ; however , "):
            if marker in text:
                clause = text.split(marker)[1]
    flips = sum(clause.split().count(w) for w in ("not", "false", "nobody"))
    positive = any(w in synthetic_sentiment.POSITIVE for w in clause.split())
    return int(positive) ^ (flips % 2)


def test_generator_is_deterministic_per_seed_and_split():
    a = synthetic_sentiment.generate(80, seed=3, split="train")
    assert a == synthetic_sentiment.generate(80, seed=3, split="train")
    assert a != synthetic_sentiment.generate(80, seed=4, split="train")
    assert a != synthetic_sentiment.generate(80, seed=3, split="test")


def test_generator_labels_follow_negation_and_contrast():
    rows = synthetic_sentiment.generate(500, seed=0, split="train")
    assert {r["construction"] for r in rows} == set(synthetic_sentiment.CONSTRUCTIONS)
    assert all(r["label"] == oracle_label(r["sentence"]) for r in rows)
    assert 0.4 < sum(r["label"] for r in rows) / len(rows) < 0.6
    lengths = [len(r["sentence"].split()) for r in rows]
    assert min(lengths) <= 8 and max(lengths) >= 35, "lengths should vary from short to long"
    # Polarity words alone must not give the label: negated sentences use the opposite adjective.
    negated = [r for r in rows if r["construction"] == "negation"]
    assert all(any(w in synthetic_sentiment.POSITIVE for w in r["sentence"].split()) != bool(r["label"]) for r in negated)


def test_prepare_builds_vocabulary_and_io(tmp_path):
    task = make_task(tmp_path, max_len=12)
    io = task.prepare()
    assert io.kind == "classification" and io.n_classes == 2 and io.max_len == 12
    assert max(len(ids) for ids in task.encoded["train"]) <= 12
    assert list((tmp_path / "tokenizers").glob("*.json")), "vocabulary should be cached under cache_dir"
    batch = next(task.batches("train", 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert batch["tokens"].shape == batch["padding_mask"].shape and batch["labels"].shape == (16,)
    assert batch.n_tokens == int((~batch["padding_mask"]).sum())
    assert task.num_batches("validation", 16) == 4


def test_metrics_equal_sklearn_on_predictions(tmp_path):
    task = make_task(tmp_path)
    model = build(task, "transformer")
    ev = task.evaluate(model, "test", batch_size=16, device=torch.device("cpu"))
    refs = [p["reference"] for p in ev.predictions]
    preds = [p["prediction"] for p in ev.predictions]
    assert len(ev.predictions) == 60 and {"id", "input", "prediction", "reference"} <= set(ev.predictions[0])
    assert ev.metrics["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert ev.metrics["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro", labels=[0, 1], zero_division=0))
    matrix = json.loads(ev.artifacts["confusion_matrix.json"])["matrix"]
    assert matrix == confusion_matrix(refs, preds, labels=[0, 1]).tolist()


def test_accuracy_per_construction_is_recomputable_from_the_predictions(tmp_path):
    task = make_task(tmp_path)
    ev = task.evaluate(build(task, "rnn"), "test", batch_size=16, device=torch.device("cpu"))
    generated = {r["id"]: r["construction"] for r in synthetic_sentiment.generate(60, task.options.data.seed, "test")}
    assert all(p["construction"] == generated[p["id"]] for p in ev.predictions)
    for construction in synthetic_sentiment.CONSTRUCTIONS:
        picked = [p for p in ev.predictions if p["construction"] == construction]
        assert picked, f"60 test examples should hold every construction, {construction!r} missing"
        expected = accuracy_score([p["reference"] for p in picked], [p["prediction"] for p in picked])
        assert ev.metrics[f"accuracy_{construction}"] == pytest.approx(expected)


def test_real_data_has_no_construction_breakdown(tmp_path):
    data = write_review_folder(tmp_path, "sentence", "label")
    task = make_task(tmp_path, data={"source": "datasets", "path": str(data)})
    ev = task.evaluate(build(task, "rnn"), "test", batch_size=16, device=torch.device("cpu"))
    assert set(ev.metrics) == {"accuracy", "macro_f1"}
    assert "construction" not in ev.predictions[0]


@pytest.mark.parametrize("pooling", ["mean", "max", "first"])
def test_pooling_ignores_padding(tmp_path, pooling):
    """An input's logits are the same alone and padded inside a batch of longer inputs."""
    task = make_task(tmp_path)
    model = build(task, "transformer", {"pooling": pooling}).eval()
    assert model.pooling == pooling
    batch = next(task.batches("test", 8, shuffle=False))
    lengths = (~batch["padding_mask"]).sum(1)
    short = int(lengths.argmin())
    assert lengths[short] < batch["tokens"].shape[1], "the batch should pad its shortest input"
    with torch.no_grad():
        batched = model(batch["tokens"], batch["padding_mask"])[short]
        alone_tokens = batch["tokens"][short: short + 1, : lengths[short]]
        alone = model(alone_tokens, torch.zeros_like(alone_tokens, dtype=torch.bool))[0]
    assert torch.allclose(batched, alone, atol=1e-5)


def test_first_pooling_reads_a_learned_summary_position(tmp_path):
    task = make_task(tmp_path)
    model = build(task, "transformer", {"pooling": "first"})
    batch = next(task.batches("train", 8, shuffle=False))
    task.loss(model, batch).backward()
    assert model.summary.grad is not None and model.summary.grad.abs().sum() > 0
    with pytest.raises(BadInputError, match=r"model\.pooling: Input should be 'mean', 'max' or 'first' \(got 'cls'\)"):
        discover().model.get("transformer").factory.parse_options({"pooling": "cls"})


SENTIMENT_GRID = """
name: sentiment_breakdown
grid:
  task: [sentiment]
  model:
    - {family: rnn, cell: lstm}
    - {family: transformer, attention: multihead, pooling: max}
  seed: [0]
model: {d_model: 16, n_layers: 1, n_heads: 2, dropout: 0.0}
train: {epochs: 1, batch_size: 32, max_steps: 2, save_checkpoint: false}
tasks:
  sentiment: {data: {source: synthetic, n_train: 64, n_validation: 40, n_test: 60}}
"""


def test_runs_log_the_breakdown_and_compare_shows_it(workdir, tracking_uri):
    write_grid(workdir / "g.yaml", SENTIMENT_GRID)
    result = CliRunner().invoke(app, ["run", "g.yaml", "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("sentiment_breakdown")
    children = client.search_runs([exp.experiment_id], CHILD_FILTER)
    assert len(children) == 2
    columns = [f"test/accuracy_{c}" for c in synthetic_sentiment.CONSTRUCTIONS]
    for child in children:
        assert set(columns) <= set(child.data.metrics)
        if child.data.tags[Tag.FAMILY] == "transformer":
            assert child.data.params["model.pooling"] == "max"
    markdown = CliRunner().invoke(app, ["compare", "g.yaml", "--tracking-uri", tracking_uri, "--format", "markdown"])
    assert markdown.exit_code == 0, markdown.output
    header = next(line for line in markdown.output.splitlines() if line.startswith("| model"))
    assert all(column in header for column in columns)


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_a_few_training_steps_lower_the_loss(tmp_path, family):
    task = make_task(tmp_path)
    model = build(task, family)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = next(task.batches("train", 32, shuffle=True, generator=torch.Generator().manual_seed(0)))
    losses = []
    for _ in range(15):
        loss = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def write_jsonl(path: Path, rows):
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_review_folder(tmp_path: Path, text_column: str, label_column: str) -> Path:
    """A local dataset folder: 20 reviews "good film" (1) / "bad film" (0) per split."""
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        write_jsonl(data / f"{split}.jsonl.gz", [{text_column: f"{w} film", label_column: int(w == "good")}
                                                  for w in ["good", "bad"] * 10])
    return data


def test_loads_local_files_with_column_mapping(tmp_path):
    data = write_review_folder(tmp_path, "review", "stars")
    task = make_task(tmp_path, data={"source": "datasets", "path": str(data), "columns": {"text": "review", "label": "stars"}})
    assert task.prepare().n_classes == 2
    assert task.examples["test"][0] == {"id": "test-0", "text": "good film", "label": 1}

    bad = make_task(tmp_path, data={"source": "datasets", "path": str(data)})
    with pytest.raises(BadInputError, match=r"tasks\.sentiment\.data\.columns: dataset has no column\(s\) \['sentence'"):
        bad.prepare()


def test_unlabelled_split_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl.gz", [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}])
    write_jsonl(data / "validation.jsonl.gz", [{"sentence": "good", "label": 1}])
    write_jsonl(data / "test.jsonl.gz", [{"sentence": "meh", "label": -1}])
    task = make_task(tmp_path, data={"source": "datasets", "path": str(data)})
    with pytest.raises(BadInputError, match=r"split 'test' row 0 has label -1.*splits\.test=validation"):
        task.prepare()


def test_study_grid_is_valid(workdir):
    study = Path(__file__).resolve().parents[1] / "experiments" / "sentiment_study.yaml"
    result = CliRunner().invoke(app, ["run", str(study), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "15 runs" in result.output and "sentiment/mh-first/s2" in result.output
