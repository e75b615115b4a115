"""Sentiment task: generator determinism and labels, data loading, metrics, training."""

import gzip
import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from attnbench import ModelDims
from attnbench.errors import BadInputError
from attnbench.plugin_host import discover
from attnbench.plugins.tasks import synthetic_sentiment
from attnbench.plugins.tasks.sentiment import SentimentTask

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
    assert "accuracy_negation" in ev.metrics


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


def test_loads_local_files_with_column_mapping(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        write_jsonl(data / f"{split}.jsonl.gz", [{"review": f"{w} film", "stars": int(w == "good")}
                                                  for w in ["good", "bad"] * 10])
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
