"""Plugins used only by the tests (loaded with ``--plugin attnbench_test_plugins``).

``toy`` is a tiny classification task (label = whether token 7 occurs) whose options can make
it fail at a chosen stage, so the runner's failure handling is tested on real runs.
"""

import time
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from attnbench import Batch, Evaluation, Task, TaskIO, hookimpl
from attnbench.significance import PerExampleScore


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_train: int = 64
    seq_len: int = 12
    fail_at: Literal["never", "prepare", "loss", "nan", "interrupt"] = "never"
    slow_s: float = 0.0  # sleep per training step: pairings that last, for tests of runs in flight


class ToyTask(Task):
    kind = "classification"
    primary_metric = "accuracy"
    metric_scale = 100.0  # logged in percent, unlike the built-ins: the scale is what compare reads
    significance = PerExampleScore(lambda record: float(record["prediction"] == record["reference"]))
    Options = ToyOptions

    def prepare(self):
        if self.options.fail_at == "prepare":
            raise RuntimeError("toy task asked to fail in prepare")
        g = torch.Generator().manual_seed(0)
        self.data = {}
        for split, n in (("train", self.options.n_train), ("validation", 32), ("test", 32)):
            tokens = torch.randint(6, 12, (n, self.options.seq_len), generator=g)
            labels = (tokens == 7).any(dim=1).long()
            self.data[split] = (tokens, labels)
        return TaskIO(kind="classification", vocab_size=12, max_len=self.options.seq_len, n_classes=2)

    def num_batches(self, split, batch_size):
        return -(-len(self.data[split][0]) // batch_size)

    def batches(self, split, batch_size, *, shuffle, generator=None):
        tokens, labels = self.data[split]
        order = torch.randperm(len(tokens), generator=generator) if shuffle else torch.arange(len(tokens))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield Batch({"tokens": tokens[idx], "padding_mask": torch.zeros_like(tokens[idx], dtype=torch.bool),
                         "labels": labels[idx]}, n_tokens=tokens[idx].numel(), ids=idx.tolist())

    def loss(self, model, batch):
        if self.options.fail_at == "loss":
            raise ValueError("toy task asked to fail in loss")
        if self.options.fail_at == "interrupt":
            raise KeyboardInterrupt
        if self.options.slow_s and model.training:
            time.sleep(self.options.slow_s)
        logits = model(batch["tokens"], batch["padding_mask"])
        loss = F.cross_entropy(logits, batch["labels"])
        return loss * float("nan") if self.options.fail_at == "nan" else loss

    def evaluate(self, model, split, *, batch_size, device):
        correct, preds = 0, []
        for batch in self.batches(split, batch_size, shuffle=False):
            batch = batch.to(device)
            pred = model(batch["tokens"], batch["padding_mask"]).argmax(-1)
            correct += (pred == batch["labels"]).sum().item()
            preds += [{"id": i, "input": "", "prediction": int(p), "reference": int(r)}
                      for i, p, r in zip(batch.ids, pred.tolist(), batch["labels"].tolist())]
        return Evaluation({"accuracy": 100.0 * correct / len(preds)}, preds)

    def attention_examples(self, n=2):
        tokens, labels = self.data["test"]
        return [([str(t) for t in tokens[i].tolist()],
                 Batch({"tokens": tokens[i:i + 1], "padding_mask": torch.zeros_like(tokens[i:i + 1], dtype=torch.bool),
                        "labels": labels[i:i + 1]}, n_tokens=tokens.shape[1], ids=[i]))
                for i in range(min(n, len(tokens)))]


@hookimpl
def register_tasks(register):
    register("toy", ToyTask)


class FailingToyOptions(ToyOptions):
    fail_at: Literal["never", "prepare", "loss", "nan", "interrupt"] = "loss"


class FailingToyTask(ToyTask):
    """The toy task, failing in ``loss`` by default: one broken task beside a healthy one."""

    Options = FailingToyOptions


@hookimpl(specname="register_tasks")
def register_failing_task(register):
    register("toy_failing", FailingToyTask)
