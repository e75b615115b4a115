"""The contract of a task: data, tokenization, batching, loss and metrics.

The runner creates one task instance per (task name, task options) in a grid, calls
``prepare()`` once, and shares it between every model and seed, so all models of a task see
the same data and vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator

import torch
from pydantic import BaseModel

from .options import parse_options
from .models import TaskIO


@dataclass
class Batch:
    """Tensors of one batch (task-defined keys) and how many tokens it holds (for tokens/s)."""

    tensors: dict[str, torch.Tensor]
    n_tokens: int
    ids: list = field(default_factory=list)

    def to(self, device) -> "Batch":
        return Batch({k: v.to(device, non_blocking=True) for k, v in self.tensors.items()}, self.n_tokens, self.ids)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]


@dataclass
class Evaluation:
    """What ``Task.evaluate`` returns.

    ``metrics``: name -> float, without split prefix (the runner adds ``val/`` or ``test/``).
    ``predictions``: one dict per example with at least ``id``, ``input``, ``prediction``,
    ``reference`` (or ``references``); written as ``predictions.jsonl``.
    ``artifacts``: file name -> bytes or str content, logged next to the predictions.
    ``tags``: extra MLflow tags (e.g. ``sacrebleu.signature``).
    """

    metrics: dict[str, float]
    predictions: list[dict] = field(default_factory=list)
    artifacts: dict[str, bytes | str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class Task:
    """Base class of tasks. Subclasses set the class attributes and implement the methods."""

    kind: ClassVar[str]  # one of attnbench.models.TASK_KINDS
    primary_metric: ClassVar[str]
    greater_is_better: ClassVar[bool] = True
    Options: ClassVar[type[BaseModel]]
    description: ClassVar[str] = ""

    def __init__(self, options: BaseModel, *, cache_dir: Path):
        self.options = options
        self.cache_dir = Path(cache_dir)

    @classmethod
    def parse_options(cls, raw: dict | None, where: str) -> BaseModel:
        """Validate this class's options (see :func:`attnbench.options.parse_options`)."""
        return parse_options(cls.Options, raw, where)

    def prepare(self) -> TaskIO:
        """Load data and build the vocabulary (idempotent); return what models need to know."""
        raise NotImplementedError

    def batches(self, split: str, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Yield batches of ``split`` (``train``, ``validation`` or ``test``)."""
        raise NotImplementedError

    def num_batches(self, split: str, batch_size: int) -> int:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean training loss of one batch (the runner calls ``backward`` on it)."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, split: str, *, batch_size: int, device: torch.device) -> Evaluation:
        """Metrics over the whole split (corpus-level where the metric is), plus predictions."""
        raise NotImplementedError

    def attention_examples(self, n: int = 2) -> list[tuple[list[str], Batch]]:
        """A few fixed examples (tokens, one-example batch) for attention-map pictures."""
        return []
