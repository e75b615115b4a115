"""Synthetic grid runs written straight to an MLflow store, following the runner's conventions.

For tests, benchmarks and demos of ``attnbench compare`` and the UI without training
anything: each child run gets the tags, test/perf metrics, curves and a predictions.jsonl
that a real run of the same task would log, with predictions drawn so that a model's
"skill" is its chance of getting an example right. Metrics are computed from those
predictions (sacrebleu, scikit-learn), so they agree with what significance tests read.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass

import numpy as np
from mlflow.entities import Metric

from attnbench.run import record

WORDS = ("a dog runs over the green field while two children play with a red ball near the old "
         "house and a woman in a blue coat walks past the small shop on the corner").split()
LABELS = ("negative", "positive")
LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, None))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    primary_metric: str
    metric_scale: float
    greater_is_better: bool = True


TASKS = {
    "sentiment": TaskSpec("sentiment", "classification", "accuracy", 1.0),
    "qa": TaskSpec("qa", "span", "f1", 100.0),
    "translation": TaskSpec("translation", "seq2seq", "bleu", 100.0),
}


def _examples(spec: TaskSpec, n: int, skill: float, rng: np.random.Generator) -> list[dict]:
    """``n`` prediction records; each is right with probability ``skill``.

    The references depend only on the example index (same test set for every model)."""
    out = []
    for i in range(n):
        ref_rng = np.random.default_rng(10_000 + i)
        right = rng.random() < skill
        if spec.kind == "classification":
            ref = LABELS[int(ref_rng.integers(2))]
            pred = ref if right else LABELS[1 - LABELS.index(ref)]
            out.append({"id": i, "input": f"review {i}", "prediction": pred, "reference": ref})
        elif spec.kind == "span":
            ref = str(ref_rng.choice(WORDS))
            pred = ref if right else f"not-{ref}"
            out.append({"id": f"q{i}", "input": f"where is item {i}?", "prediction": pred, "references": [ref]})
        else:
            length = int(ref_rng.integers(3, 40))
            ref_words = [str(w) for w in ref_rng.choice(WORDS, size=length)]
            keep = rng.random(length) < (skill if right else skill / 2)
            hyp = [w if k else str(rng.choice(WORDS)) for w, k in zip(ref_words, keep)]
            out.append({"id": i, "input": " ".join(ref_words), "prediction": " ".join(hyp),
                        "reference": " ".join(ref_words)})
    return out


def metrics_for(spec: TaskSpec, predictions: list[dict]) -> dict[str, float]:
    """The ``test/*`` metrics a real task would log for these predictions."""
    if spec.kind == "classification":
        from sklearn.metrics import accuracy_score, f1_score

        y_true = [p["reference"] for p in predictions]
        y_pred = [p["prediction"] for p in predictions]
        return {"test/accuracy": float(accuracy_score(y_true, y_pred)),
                "test/macro_f1": float(f1_score(y_true, y_pred, average="macro"))}
    if spec.kind == "span":
        exact = float(np.mean([p["prediction"] in p["references"] for p in predictions]) * 100)
        return {"test/f1": exact, "test/exact_match": exact}
    import sacrebleu

    hyps = [p["prediction"] for p in predictions]
    refs = [p["reference"] for p in predictions]
    metrics = {"test/bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
               "test/chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}
    for lo, hi in LENGTH_BUCKETS:
        idx = [i for i, p in enumerate(predictions)
               if len(p["input"].split()) >= lo and (hi is None or len(p["input"].split()) <= hi)]
        if idx:
            name = f"test/bleu_len_{lo}_{'inf' if hi is None else hi}"
            metrics[name] = sacrebleu.corpus_bleu([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
    return metrics


def create_parent(client, experiment_id: str, grid_name: str, grid_yaml: str = "") -> str:
    """A parent run as ``attnbench run`` starts it (left RUNNING; terminate it when done)."""
    run = client.create_run(experiment_id, run_name=f"{grid_name}", tags=record.parent_tags(grid_name, grid_yaml))
    if grid_yaml:
        client.log_text(run.info.run_id, grid_yaml, record.GRID_FILE)
    return run.info.run_id


def log_child_run(client, experiment_id: str, parent_run_id: str, *, task: str, model: str, seed: int,
                  skill: float = 0.7, n_examples: int = 100, status: str = "FINISHED",
                  tokens_per_s: float = 1000.0, params: int = 10_000, epochs: int = 2,
                  steps_per_epoch: int = 5, with_predictions: bool = True) -> str:
    """One child run of ``task`` for model label ``model`` (``rnn-*`` labels are family rnn, the
    no-attention baseline)."""
    spec = TASKS[task]
    family, _, attention = model.partition("-")
    attention = "none" if family == "rnn" else attention
    rng = np.random.default_rng(zlib.crc32(f"{task}/{model}/{seed}".encode()))
    tags = record.child_tags(
        parent_run_id=parent_run_id, grid="synthetic", task=task, kind=spec.kind, family=family, model=model,
        seed=seed, run_key=f"{task}-{model}-{seed}-{status}", primary_metric=spec.primary_metric,
        greater_is_better=spec.greater_is_better, metric_scale=spec.metric_scale, attention=attention,
        baseline=family == "rnn")
    if spec.kind == "seq2seq":
        tags["sacrebleu.signature"] = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    run = client.create_run(experiment_id, run_name=f"{task}/{model}/seed{seed}", tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for step in range(epochs * steps_per_epoch):
        metrics.append(Metric("train/loss", float(2.0 * np.exp(-step / 6) + 0.05 * rng.random()), now, step))
    if status == "FINISHED":
        predictions = _examples(spec, n_examples, skill, rng)
        final = metrics_for(spec, predictions)
        primary = final[f"test/{spec.primary_metric}"]
        for epoch in range(epochs):
            metrics.append(Metric(f"val/{spec.primary_metric}", primary * (epoch + 1) / epochs, now, epoch))
        metrics += [Metric(k, v, now, 0) for k, v in final.items()]
        speed = tokens_per_s * (1 + 0.05 * rng.standard_normal())
        metrics += [Metric("perf/params", float(params), now, 0),
                    Metric("perf/train_tokens_per_s", float(speed), now, 0),
                    Metric("perf/wall_s", float(50_000 / speed), now, 0),
                    Metric("perf/peak_mem_mib", 100.0, now, 0)]
        if with_predictions:
            client.log_text(run_id, "\n".join(json.dumps(p) for p in predictions) + "\n", record.PREDICTIONS)
    elif status == "FAILED":
        client.log_text(run_id, "Traceback (most recent call last):\nRuntimeError: synthetic failure\n",
                        record.TRACEBACK)
        client.set_tag(run_id, record.Tag.ERROR, "RuntimeError: synthetic failure")
    for i in range(0, len(metrics), 900):  # log_batch takes at most 1000 entries
        client.log_batch(run_id, metrics=metrics[i:i + 900])
    client.set_terminated(run_id, status)
    return run_id
