"""What every classification task shares: the loss and class predictions over a split.

Batches hold ``tokens``, ``padding_mask`` and ``labels``; the model is a classifier
``model(tokens, padding_mask) -> logits (B, n_classes)`` (see attnbench.models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.significance import PerExampleScore


def example_accuracy(record: dict) -> float:
    """1.0 when a predictions.jsonl record's prediction equals its reference."""
    return float(record.get("prediction") == record.get("reference"))


# accuracy is the mean of example_accuracy: a paired bootstrap over examples tests it
ACCURACY_SIGNIFICANCE = PerExampleScore(example_accuracy)


def classification_loss(model, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch["tokens"], batch["padding_mask"]), batch["labels"])


def predict_classes(task, model, split: str, *, batch_size: int, device) -> list[int]:
    """Predicted class per example of ``split``, in order (core sets eval mode and no_grad)."""
    preds: list[int] = []
    for batch in task.batches(split, batch_size, shuffle=False):
        batch = batch.to(device)
        preds += model(batch["tokens"], batch["padding_mask"]).argmax(-1).tolist()
    return preds
