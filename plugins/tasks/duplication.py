"""Task ``duplication``: the Reformer's synthetic copy task (Kitaev et al. 2020, section 5).

Every example is ``0 w 0 w``: a separator, a string ``w`` of ``seq_len / 2 - 1`` random
symbols, the separator again and ``w`` once more. A decoder-only causal model (task kind
``lm``) reads the sequence left to right; the first half is random, so only the second copy
of ``w`` can be predicted, and only by looking back exactly ``seq_len / 2`` positions. That
makes the task a clean probe of whether an attention variant finds a distant token:
accuracy is counted on the second half only (teacher forcing, next-token argmax).

Ids (fixed, no tokenizer): 0..5 are attnbench's special tokens (``[PAD]`` ... ``[CLS]``); the
paper's separator ``0`` is ``[SEP]`` = 4; symbol ``k`` (1..``vocab``) is id ``5 + k``.
The vocabulary therefore has ``vocab + 6`` entries.

Data is a pure function of ``(seed, split)`` (NumPy ``default_rng``), so every model of a
grid sees the same sequences.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, field_validator

from attnbench import Batch, Evaluation, SplitSizes, SplitTask, TaskIO, hookimpl
from attnbench.data import PAD, SEP, SPECIAL_TOKENS
from attnbench.tasks import SPLITS

SPLIT_INDEX = {split: i for i, split in enumerate(SPLITS)}
FIRST_SYMBOL = len(SPECIAL_TOKENS)  # symbol 1 of the paper
TASK_STREAM = 6  # keeps this task's random streams apart from the other probes'


class DuplicationOptions(SplitSizes):
    """``tasks.duplication`` section of a grid file."""

    model_config = ConfigDict(extra="forbid")
    seq_len: int = Field(256, ge=4, description="whole sequence length (even); the paper uses 1024")
    vocab: int = Field(127, ge=2, description="number of distinct symbols in w (the paper: 127)")
    seed: int = Field(1234, ge=0, description="data seed (not the training seed)")
    loss_on: Literal["second_half", "all"] = Field(
        "second_half", description="positions that enter the training loss; the first half is unpredictable noise")

    @field_validator("seq_len")
    @classmethod
    def _even(cls, n: int) -> int:
        if n % 2:
            raise ValueError(f"must be even (two halves '0 w'), e.g. {n + 1}")
        return n


def generate(n: int, seq_len: int, vocab: int, seed: int, split: str) -> torch.Tensor:
    """``n`` sequences ``0 w 0 w`` as a ``(n, seq_len)`` long tensor of ids, deterministic per ``(seed, split)``."""
    rng = np.random.default_rng([seed, SPLIT_INDEX[split], TASK_STREAM])
    half = seq_len // 2
    w = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + vocab, size=(n, half - 1))
    sep = np.full((n, 1), SEP)
    return torch.from_numpy(np.concatenate([sep, w, sep, w], axis=1).astype(np.int64))


def scored_positions(seq_len: int) -> slice:
    """Positions whose next-token prediction is scored: from the second separator (which
    predicts the first symbol of the second ``w``) to the second-to-last token."""
    return slice(seq_len // 2, seq_len - 1)


class DuplicationTask(SplitTask):
    """Copy a random string seen ``seq_len / 2`` tokens earlier (decoder-only, causal)."""

    kind = "lm"
    primary_metric = "accuracy"
    greater_is_better = True
    metric_scale = 1.0
    Options = DuplicationOptions
    description = "Reformer duplication '0 w 0 w'; next-token accuracy on the second half"

    def __init__(self, options: DuplicationOptions, *, cache_dir):
        super().__init__(options, cache_dir=cache_dir)
        self.io: TaskIO | None = None
        self.data: dict[str, torch.Tensor] = {}

    def prepare(self) -> TaskIO:
        if self.io is None:
            o = self.options
            self.data = {split: generate(o.size(split), o.seq_len, o.vocab, o.seed, split) for split in SPLITS}
            self.io = TaskIO(kind=self.kind, vocab_size=FIRST_SYMBOL + o.vocab, pad_id=PAD, max_len=o.seq_len)
        return self.io

    def split_size(self, split):
        return len(self.data[split])

    def make_batch(self, split: str, indices: list[int]) -> Batch:
        tokens = self.data[split][indices]
        mask = torch.zeros_like(tokens, dtype=torch.bool)  # every sequence has the full length
        return Batch({"tokens": tokens, "padding_mask": mask}, n_tokens=tokens.numel(),
                     ids=[f"{split}-{i}" for i in indices])

    def loss(self, model, batch):
        tokens = batch["tokens"]
        logits = model(tokens, batch["padding_mask"])
        where = scored_positions(tokens.shape[1]) if self.options.loss_on == "second_half" else slice(0, tokens.shape[1] - 1)
        inputs_at = logits[:, where]
        targets = tokens[:, where.start + 1: where.stop + 1]
        return F.cross_entropy(inputs_at.reshape(-1, inputs_at.shape[-1]), targets.reshape(-1))

    def predict(self, model, split: str, *, batch_size: int, device) -> torch.Tensor:
        """Predicted second halves ``(n, seq_len / 2 - 1)``: argmax at every scored position."""
        where = scored_positions(self.options.seq_len)
        out = []
        for batch in self.batches(split, batch_size, shuffle=False):
            batch = batch.to(device)
            out.append(model(batch["tokens"], batch["padding_mask"])[:, where].argmax(-1).cpu())
        return torch.cat(out)

    def evaluate(self, model, split, *, batch_size, device) -> Evaluation:
        self.prepare()
        predicted = self.predict(model, split, batch_size=batch_size, device=device)
        where = scored_positions(self.options.seq_len)
        reference = self.data[split][:, where.start + 1: where.stop + 1]
        correct = predicted == reference
        metrics = {"accuracy": correct.float().mean().item(),
                   "sequence_accuracy": correct.all(dim=1).float().mean().item()}
        predictions = [{"id": f"{split}-{i}", "input": _text(ref), "prediction": _text(pred), "reference": _text(ref),
                        "correct_tokens": int(ok.sum())}
                       for i, (pred, ref, ok) in enumerate(zip(predicted, reference, correct))]
        return Evaluation(metrics=metrics, predictions=predictions)

    def attention_examples(self, n: int = 2):
        self.prepare()
        out = []
        for i in range(min(n, len(self.data["test"]))):
            out.append(([_symbol(t) for t in self.data["test"][i].tolist()], self.make_batch("test", [i])))
        return out


def _symbol(token_id: int) -> str:
    """The paper's notation: ``0`` for the separator, ``1..N`` for symbols (other specials by name)."""
    if token_id == SEP:
        return "0"
    return SPECIAL_TOKENS[token_id] if token_id < FIRST_SYMBOL else str(token_id - FIRST_SYMBOL + 1)


def _text(ids: torch.Tensor) -> str:
    return " ".join(_symbol(t) for t in ids.tolist())


@hookimpl
def register_tasks(register):
    register("duplication", DuplicationTask)
