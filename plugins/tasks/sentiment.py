"""Task ``sentiment``: sentence classification, scored with accuracy and macro-F1 (scikit-learn).

Data: the built-in generator (:mod:`attnbench.plugins.tasks.synthetic_sentiment`) or any
dataset with a text and an integer label column (SST-2: ``sentence``/``label``; IMDB:
``columns: {text: text}``). A subword vocabulary is trained on the train split and cached.
Artifacts: ``confusion_matrix.json`` (rows: reference, columns: prediction).
"""

from __future__ import annotations

import json

import torch
from pydantic import BaseModel, ConfigDict, Field

from attnbench import Batch, Evaluation, SplitTask, TaskIO, hookimpl
from attnbench.data import PAD, UNK, DataSource, TokenizerOptions, load_splits, pad_batch, require_columns, train_tokenizer
from attnbench.errors import BadInputError

from . import synthetic_sentiment
from .classification import ACCURACY_SIGNIFICANCE, classification_loss, predict_classes

WHERE = "tasks.sentiment"
DEFAULT_COLUMNS = {"text": "sentence", "label": "label"}


class SentimentOptions(BaseModel):
    """``tasks.sentiment`` section of a grid file."""

    model_config = ConfigDict(extra="forbid")
    data: DataSource = Field(default_factory=DataSource)
    tokenizer: TokenizerOptions = Field(default_factory=TokenizerOptions)
    max_len: int = Field(128, gt=0, description="longer inputs are truncated to this many tokens")


class SentimentTask(SplitTask):
    """Binary (or k-way) sentiment classification."""

    kind = "classification"
    primary_metric = "accuracy"
    greater_is_better = True
    metric_scale = 1.0
    significance = ACCURACY_SIGNIFICANCE
    Options = SentimentOptions
    description = "sentence sentiment; accuracy and macro-F1; synthetic data hinges on negation and contrast"

    def __init__(self, options: SentimentOptions, *, cache_dir):
        super().__init__(options, cache_dir=cache_dir)
        self.io: TaskIO | None = None
        self.examples: dict[str, list[dict]] = {}  # split -> [{id, text, label, (construction)}]
        self.encoded: dict[str, list[list[int]]] = {}
        self.tokenizer = None

    # -------------------------------------------------------------------- data

    def _load_rows(self) -> dict[str, list[dict]]:
        data = self.options.data
        if data.source == "synthetic":
            rows = {}
            for split in self.splits:
                n = data.limit(split)
                if n is None:
                    raise BadInputError(f"{WHERE}.data.n_{split}: synthetic data needs a size (a positive integer)")
                rows[split] = [{"id": r["id"], "text": r["sentence"], "label": r["label"], "construction": r["construction"]}
                               for r in synthetic_sentiment.generate(n, data.seed, split)]
            return rows
        data = data.model_copy(update={"columns": DEFAULT_COLUMNS | data.columns})
        loaded = load_splits(data, self.splits, f"{WHERE}.data")
        rows = {}
        for split, ds in loaded.items():
            require_columns(ds, data, ["text", "label"], f"{WHERE}.data")
            texts, labels = ds[data.columns["text"]], ds[data.columns["label"]]
            id_column = next((c for c in ("id", "idx") if c in ds.column_names), None)
            ids = ds[id_column] if id_column else [f"{split}-{i}" for i in range(len(ds))]
            rows[split] = [{"id": i, "text": t, "label": y} for i, t, y in zip(ids, texts, labels)]
        return rows

    def _check_labels(self, rows: dict[str, list[dict]]) -> int:
        """Labels must be integers 0..K-1; returns K (from the train split)."""
        for split, items in rows.items():
            for pos, row in enumerate(items):
                y = row["label"]
                if isinstance(y, bool) or not isinstance(y, int) or y < 0:
                    raise BadInputError(
                        f"{WHERE}.data: split {split!r} row {pos} has label {y!r}; labels must be integers 0..K-1 "
                        f"(an unlabelled test split, e.g. GLUE's, can be replaced: --set {WHERE}.data.splits.test=validation)")
        n_classes = max((r["label"] for r in rows["train"]), default=-1) + 1
        if n_classes < 2:
            raise BadInputError(f"{WHERE}.data: the train split must hold at least two classes")
        for split, items in rows.items():
            bad = [r["label"] for r in items if r["label"] >= n_classes]
            if bad:
                raise BadInputError(f"{WHERE}.data: split {split!r} has label {bad[0]} never seen in train (0..{n_classes - 1})")
        return n_classes

    def prepare(self) -> TaskIO:
        if self.io is not None:
            return self.io
        rows = self._load_rows()
        n_classes = self._check_labels(rows)
        self.tokenizer = train_tokenizer([r["text"] for r in rows["train"]], self.options.tokenizer, self.cache_dir)
        for split, items in rows.items():
            encodings = self.tokenizer.encode_batch([r["text"] for r in items], add_special_tokens=False)
            # an input that tokenizes to nothing still needs one real position to attend to
            self.encoded[split] = [e.ids[: self.options.max_len] or [UNK] for e in encodings]
        self.examples = rows
        self.io = TaskIO(kind=self.kind, vocab_size=self.tokenizer.get_vocab_size(), pad_id=PAD,
                         max_len=self.options.max_len, n_classes=n_classes)
        return self.io

    # ----------------------------------------------------------------- batches

    def split_size(self, split):
        return len(self.encoded[split])

    def example_lengths(self, split) -> list[int]:
        return [len(ids) for ids in self.encoded[split]]

    def make_batch(self, split: str, indices: list[int]) -> Batch:
        seqs = [self.encoded[split][i] for i in indices]
        tokens, mask = pad_batch(seqs, PAD)
        labels = torch.tensor([self.examples[split][i]["label"] for i in indices], dtype=torch.long)
        return Batch({"tokens": tokens, "padding_mask": mask, "labels": labels}, n_tokens=sum(map(len, seqs)),
                     ids=[self.examples[split][i]["id"] for i in indices])

    def loss(self, model, batch):
        return classification_loss(model, batch)

    # -------------------------------------------------------------- evaluation

    def predict(self, model, split: str, *, batch_size: int, device) -> list[int]:
        """Predicted class per example of ``split``, in order."""
        return predict_classes(self, model, split, batch_size=batch_size, device=device)

    def evaluate(self, model, split, *, batch_size, device) -> Evaluation:
        # imported here, not with the plugin: sklearn takes ~1 s to import, and every process
        # that discovers plugins (each grid worker, `attnbench plugins`) would pay it
        from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
        preds = self.predict(model, split, batch_size=batch_size, device=device)
        rows = self.examples[split]
        refs = [r["label"] for r in rows]
        labels = list(range(self.io.n_classes))
        metrics = {
            "accuracy": float(accuracy_score(refs, preds)),
            "macro_f1": float(f1_score(refs, preds, labels=labels, average="macro", zero_division=0)),
        }
        # Synthetic data: accuracy per construction shows which phenomenon a model gets wrong.
        for construction in sorted({r["construction"] for r in rows if "construction" in r}):
            picked = [i for i, r in enumerate(rows) if r.get("construction") == construction]
            metrics[f"accuracy_{construction}"] = float(accuracy_score([refs[i] for i in picked], [preds[i] for i in picked]))
        predictions = [{"id": r["id"], "input": r["text"], "prediction": p, "reference": r["label"]}
                       | ({"construction": r["construction"]} if "construction" in r else {})
                       for r, p in zip(rows, preds)]
        matrix = confusion_matrix(refs, preds, labels=labels).tolist()
        artifact = {"labels": labels, "rows": "reference", "columns": "prediction", "matrix": matrix}
        return Evaluation(metrics=metrics, predictions=predictions,
                          artifacts={"confusion_matrix.json": json.dumps(artifact, indent=1)})

    def attention_examples(self, n: int = 2):
        self.prepare()
        out = []
        for i in range(min(n, len(self.encoded["test"]))):
            tokens = [self.tokenizer.id_to_token(t) for t in self.encoded["test"][i]]
            out.append((tokens, self.make_batch("test", [i])))
        return out


@hookimpl
def register_tasks(register):
    register("sentiment", SentimentTask)
