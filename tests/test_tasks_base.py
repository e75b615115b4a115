"""The task contract's shared parts: SplitTask batching, and core owning eval mode around evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import BaseModel

from attnbench import Batch, Evaluation, ModelDims, SplitTask, Task
from attnbench.config import TrainConfig
from attnbench.errors import BadInputError
from attnbench.plugin_host import discover
from attnbench.run.training import evaluate_split

CPU = torch.device("cpu")


class NoOptions(BaseModel):
    pass


class Counting(SplitTask):
    """Ten examples per split; a batch holds its example indices."""

    kind = "classification"
    primary_metric = "accuracy"
    Options = NoOptions
    prepared = 0

    def prepare(self):
        self.prepared += 1

    def split_size(self, split):
        return 10

    def make_batch(self, split, indices):
        return Batch({"index": torch.tensor(indices)}, n_tokens=len(indices), ids=list(indices))


def test_split_task_batches_every_example_once(tmp_path):
    task = Counting(NoOptions(), cache_dir=tmp_path)
    ordered = [b.ids for b in task.batches("test", 4, shuffle=False)]
    assert ordered == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and task.prepared == 1
    assert task.num_batches("train", 4) == math.ceil(10 / 4) == 3
    first = [b.ids for b in task.batches("train", 4, shuffle=True, generator=torch.Generator().manual_seed(0))]
    again = [b.ids for b in task.batches("train", 4, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert first == again and sorted(i for ids in first for i in ids) == list(range(10)) and first != ordered
    with pytest.raises(BadInputError, match="unknown split 'dev'; valid: train, validation, test"):
        next(task.batches("dev", 4, shuffle=False))


class ModeProbe(Task):
    """Records the model's mode and the grad switch while it evaluates."""

    kind = "classification"
    primary_metric = "accuracy"
    Options = NoOptions
    fail = False

    def evaluate(self, model, split, *, batch_size, device):
        self.seen = (model.training, torch.is_grad_enabled())
        if self.fail:
            raise RuntimeError("evaluation failed")
        return Evaluation({"accuracy": 1.0})


@pytest.mark.parametrize("training", [True, False])
def test_core_evaluates_in_eval_mode_without_grad_and_restores_the_mode(tmp_path, training):
    task, model = ModeProbe(NoOptions(), cache_dir=tmp_path), torch.nn.Linear(2, 2).train(training)
    evaluate_split(task, model, "test", TrainConfig(), CPU)
    assert task.seen == (False, False) and model.training is training
    task.fail = True
    with pytest.raises(RuntimeError):
        evaluate_split(task, model, "test", TrainConfig(), CPU)
    assert model.training is training


@pytest.mark.parametrize("name, options", [
    ("listops", {"min_length": 8, "max_length": 16, "max_depth": 2, "n_train": 8, "n_validation": 4, "n_test": 6}),
    ("reverse", {"min_len": 2, "max_len": 5, "n_train": 8, "n_validation": 4, "n_test": 6}),
    ("duplication", {"seq_len": 8, "vocab": 4, "n_train": 8, "n_validation": 4, "n_test": 6}),
    ("sentiment", {"data": {"n_train": 40, "n_validation": 8, "n_test": 6}, "tokenizer": {"vocab_size": 120}}),
])
def test_built_in_tasks_leave_the_model_mode_to_core(tmp_path, name, options):
    """Called directly on a model in train mode, a task evaluates it in train mode: only core's
    evaluate_split switches modes (the model's modules see what the caller set)."""
    host = discover()
    task_cls = host.task.get(name).factory
    assert issubclass(task_cls, SplitTask)
    task = task_cls(task_cls.parse_options(options, f"tasks.{name}"), cache_dir=tmp_path)
    io = task.prepare()
    family_cls = host.model.get("rnn").factory
    model = family_cls(family_cls.parse_options({})).build(io, ModelDims(d_model=8, n_layers=1), host).train()
    seen = set()
    for module in model.modules():
        module.register_forward_hook(lambda m, args, out: seen.add(m.training))
    evaluation = task.evaluate(model, "test", batch_size=4, device=CPU)
    assert seen == {True} and model.training
    assert len(evaluation.predictions) == 6
    seen.clear()
    evaluate_split(task, model, "test", TrainConfig(batch_size=4), CPU)
    assert seen == {False} and model.training
