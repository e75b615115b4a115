"""The contract of a task: data, tokenization, batching, loss and metrics.

The runner creates one task instance per (task name, task options) in a grid, calls
``prepare()`` once, and shares it between every model and seed, so all models of a task see
the same data and vocabulary. Core puts the model in eval mode, without gradients, around
``Task.evaluate`` (and back in train mode after it): a task never switches modes itself.

Most tasks hold their examples in train/validation/test lists: :class:`SplitTask` does their
batching, and :class:`SplitSizes` gives generated data its ``n_train``/``n_validation``/``n_test``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, NamedTuple

import torch
from pydantic import BaseModel, Field

from .data import batch_indices, length_grouped_batches
from .errors import BadInputError
from .options import parse_options
from .models import TaskIO
from .significance import SignificanceTest


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
    Scores of trivial baselines that the task computes from the data alone (no model) are
    named by :func:`attnbench.run.record.trivial_metric`; compare shows them as reference
    rows, never as a model.
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
    """Base class of tasks. Subclasses set the class attributes and implement the methods.

    What compare needs to know about the metrics is declared here, never guessed from names:
    ``primary_metric`` (the metric runs are ranked and tested by), ``greater_is_better``,
    ``metric_scale`` (the best possible value of the primary metric: ``1.0`` for fractions
    such as accuracy, ``100.0`` for BLEU, chrF or SQuAD F1) and ``significance`` (how the
    primary metric is tested against the baseline; None: no test).
    """

    kind: ClassVar[str]  # one of attnbench.models.TASK_KINDS
    primary_metric: ClassVar[str]
    greater_is_better: ClassVar[bool] = True
    metric_scale: ClassVar[float] = 1.0
    significance: ClassVar[SignificanceTest | None] = None
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

    def batches(self, split: str, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                group_by_length: bool = False) -> Iterator[Batch]:
        """Yield batches of ``split`` (``train``, ``validation`` or ``test``).

        ``group_by_length`` (only ever passed as True, so tasks written before it keep working):
        batches of examples of similar length, as :func:`attnbench.data.length_grouped_batches`
        makes them (``train.group_by_length``)."""
        raise NotImplementedError

    def example_lengths(self, split: str) -> list[int] | None:
        """Tokens of each example of ``split``, in the order the task batches them; None when the
        task cannot tell, and then ``train.group_by_length`` is refused before training."""
        return None

    def num_batches(self, split: str, batch_size: int) -> int:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean training loss of one batch (the runner calls ``backward`` on it)."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, split: str, *, batch_size: int, device: torch.device) -> Evaluation:
        """Metrics over the whole split (corpus-level where the metric is), plus predictions.

        Core calls it with the model in eval mode and gradients off
        (:func:`attnbench.run.training.evaluate_split`)."""
        raise NotImplementedError

    def attention_examples(self, n: int = 2) -> list[tuple[list[str] | ExampleTokens, Batch]]:
        """A few fixed examples (tokens, one-example batch) for attention-map pictures.

        Tokens are a list of the input's tokens, or, for tasks whose models decode, an
        :class:`ExampleTokens` with the decoder's tokens too, so that a decoder's maps are
        labelled with its own tokens rather than the source's."""
        return []


class ExampleTokens(NamedTuple):
    """The tokens of one attention example of an encoder-decoder task."""

    source: list[str]  # what the encoder reads (its self-attention, cross-attention's keys)
    target: list[str]  # what the decoder reads, teacher-forced: BOS, y1, ... (its self-attention, cross-attention's queries)


SPLITS = ("train", "validation", "test")


class SplitSizes(BaseModel):
    """Example counts of generated splits: the options of tasks that synthesise their data
    inherit these fields (``tasks.<name>.n_train`` ...)."""

    n_train: int = Field(4000, gt=0, description="training examples")
    n_validation: int = Field(200, gt=0, description="validation examples")
    n_test: int = Field(500, gt=0, description="test examples")

    def size(self, split: str) -> int:
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}[split]


class SplitTask(Task):
    """A task whose examples sit in one list per split (train, validation, test).

    Subclasses implement ``prepare`` (filling their splits, idempotent), ``split_size`` and
    ``make_batch``; batches, their count and the split-name check live here. Override
    ``batch_plan`` to batch differently (by length, or a subset of the examples)."""

    splits: ClassVar[tuple[str, ...]] = SPLITS

    def split_size(self, split: str) -> int:
        """Number of examples in ``split``."""
        raise NotImplementedError

    def make_batch(self, split: str, indices: list[int]) -> Batch:
        """The batch of the examples ``indices`` of ``split``."""
        raise NotImplementedError

    def batch_plan(self, split: str, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                   group_by_length: bool = False) -> list[list[int]]:
        """Example indices of each batch: in order, shuffled with ``generator``, or (shuffled and
        ``group_by_length``) shuffled batches of similar length."""
        if shuffle and group_by_length:
            lengths = self.example_lengths(split)
            if lengths is None:
                raise BadInputError(f"train.group_by_length: task {type(self).__name__} does not report the lengths "
                                    f"of its examples (Task.example_lengths); set train.group_by_length: false")
            return length_grouped_batches(lengths, batch_size, generator=generator)
        return batch_indices(self.split_size(split), batch_size, shuffle=shuffle, generator=generator)

    def batches(self, split, batch_size, *, shuffle, generator=None, group_by_length=False) -> Iterator[Batch]:
        self._prepare_split(split)
        plan = self.batch_plan(split, batch_size, shuffle=shuffle, generator=generator,
                               **({"group_by_length": True} if group_by_length else {}))
        for indices in plan:
            yield self.make_batch(split, indices)

    def num_batches(self, split, batch_size) -> int:
        self._prepare_split(split)
        return len(self.batch_plan(split, batch_size, shuffle=False))

    def _prepare_split(self, split: str) -> None:
        if split not in self.splits:
            raise BadInputError(f"unknown split {split!r}; valid: {', '.join(self.splits)}")
        self.prepare()
