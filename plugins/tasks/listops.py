"""Task ``listops``: nested list operations over digits, in the style of Long Range Arena's ListOps.

An example is a bracketed expression such as ``[MAX 2 9 [MIN 4 7 ] 0 ]``; the answer (the
class, 0..9) is its value. Operators: ``MAX``, ``MIN``, ``MED`` (median; for an even count
the mean of the two middle values, truncated to an integer, as LRA does) and ``SM`` (sum
modulo 10). Getting the answer right means resolving every nested bracket, however far its
operands are from its operator: a hierarchical long-range probe for classification models.

Generation (a pure function of ``(seed, split)``): a target length is drawn uniformly from
``[min_length, max_length]``; the root operator gets that many tokens as its budget and
splits what is left after its own two tokens among 2..``max_args`` operands at random cut
points; an operand whose share can hold a bracket (4 tokens) becomes a sub-expression one
level deeper (up to ``max_depth``), otherwise a digit, and tokens an operand leaves unused
pass to the next one, so most expressions use their whole budget. The rare expression
shorter than ``min_length`` is drawn again.

Ids (fixed, no tokenizer): 0..5 are attnbench's special tokens; digits ``0``..``9`` are
6..15; ``[MAX`` ``[MIN`` ``[MED`` ``[SM`` are 16..19; ``]`` is 20.

Metrics: ``accuracy`` and ``macro_f1`` (scikit-learn), and accuracy per length bucket
``acc_len_<lo>_<hi>`` (token counts; upper edges from ``length_buckets``).
"""

from __future__ import annotations

import functools
import json
import math
import random
import statistics

import torch
from pydantic import ConfigDict, Field, field_validator, model_validator

from attnbench import Batch, Evaluation, SplitSizes, SplitTask, TaskIO, hookimpl
from attnbench.data import PAD, SPECIAL_TOKENS, pad_batch

from .classification import ACCURACY_SIGNIFICANCE, classification_loss, predict_classes

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))
VOCAB = list(SPECIAL_TOKENS) + list(DIGITS) + list(OPERATORS) + [CLOSE]
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}
SMALLEST_BRACKET = 4  # "[OP a b ]"


class ListOpsOptions(SplitSizes):
    """``tasks.listops`` section of a grid file (LRA: lengths 500-2000, depth 10, 10 operands)."""

    model_config = ConfigDict(extra="forbid")
    min_length: int = Field(32, ge=SMALLEST_BRACKET, description="shortest expression, in tokens")
    max_length: int = Field(128, ge=SMALLEST_BRACKET, description="longest expression, in tokens")
    max_depth: int = Field(10, ge=1, description="deepest bracket nesting")
    max_args: int = Field(10, ge=2, description="most operands of one operator")
    seed: int = Field(1234, ge=0, description="data seed (not the training seed)")
    length_buckets: list[int] | None = Field(
        None, description="upper edges of the length buckets of acc_len_*; default: 4 equal buckets")

    @field_validator("length_buckets")
    @classmethod
    def _increasing(cls, edges):
        if edges is not None and (not edges or any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:]))):
            raise ValueError(f"must be strictly increasing positive integers, e.g. [64, 128]; got {edges}")
        return edges

    @model_validator(mode="after")
    def _range(self):
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must not exceed max_length ({self.max_length})")
        if _capacity(self.max_depth, self.max_args) < self.min_length:
            raise ValueError(f"min_length ({self.min_length}) is more than an expression of max_depth {self.max_depth} "
                             f"and max_args {self.max_args} can hold ({_capacity(self.max_depth, self.max_args)} tokens); "
                             "raise max_depth or max_args")
        return self

    def buckets(self) -> list[tuple[int, int]]:
        """``(lo, hi)`` token-length ranges covering ``min_length..max_length``."""
        edges = self.length_buckets
        if edges is None:
            span = self.max_length - self.min_length + 1
            edges = sorted({self.min_length - 1 + math.ceil(span * k / 4) for k in range(1, 5)})
        out, lo = [], self.min_length
        for edge in edges:
            if edge >= lo:
                out.append((lo, min(edge, self.max_length)))
                lo = edge + 1
            if lo > self.max_length:
                break
        if lo <= self.max_length:
            out.append((lo, self.max_length))
        return out


# ------------------------------------------------------------------------------ generator


def capacity(depth: int, opts: ListOpsOptions) -> int:
    """Most tokens an expression that starts at ``depth`` can hold."""
    return _capacity(opts.max_depth - depth, opts.max_args)


@functools.lru_cache(maxsize=None)
def _capacity(levels: int, max_args: int) -> int:
    return 1 if levels <= 0 else 2 + max_args * _capacity(levels - 1, max_args)


def _expression(rng: random.Random, budget: int, depth: int, opts: ListOpsOptions) -> list[str]:
    """A random expression of at most ``budget`` tokens (usually exactly), at nesting level ``depth``."""
    if budget < SMALLEST_BRACKET or depth >= opts.max_depth:
        return [rng.choice(DIGITS)]
    room = min(budget, capacity(depth, opts)) - 2
    child_cap = capacity(depth + 1, opts)
    fewest = max(2, math.ceil(room / child_cap))  # enough operands to use the room
    n_args = rng.randint(fewest, max(fewest, min(opts.max_args, room)))
    cuts = sorted(rng.sample(range(1, room), n_args - 1))
    shares = [b - a for a, b in zip([0, *cuts], [*cuts, room])]
    tokens = [rng.choice(OPERATORS)]
    carry = 0  # tokens an operand could not use are offered to the next one
    for share in shares:
        share += carry
        sub = _expression(rng, min(share, child_cap), depth + 1, opts) if share >= SMALLEST_BRACKET else [rng.choice(DIGITS)]
        carry = share - len(sub)
        tokens += sub
    return tokens + [CLOSE]


def value(tokens: list[str]) -> int:
    """The value (0..9) of an expression given as tokens."""
    stack: list[list] = []
    result = None
    for token in tokens:
        if token in OPERATORS:
            stack.append([token])
        elif token == CLOSE:
            op, *args = stack.pop()
            result = _apply(op, args)
            if stack:
                stack[-1].append(result)
        else:
            if not stack:
                return int(token)
            stack[-1].append(int(token))
    return result


def _apply(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return int(statistics.median(args))
    return sum(args) % 10


def generate(n: int, opts: ListOpsOptions, split: str) -> list[dict]:
    """``n`` examples ``{id, tokens, label, depth}`` for ``split``, deterministic per ``opts.seed``."""
    rng = random.Random(f"listops/{opts.seed}/{split}")
    rows = []
    while len(rows) < n:
        target = rng.randint(opts.min_length, opts.max_length)
        tokens = _expression(rng, target, 0, opts)
        if len(tokens) < opts.min_length:
            continue
        rows.append({"id": f"{split}-{len(rows)}", "tokens": tokens, "label": value(tokens), "depth": _depth(tokens)})
    return rows


def _depth(tokens: list[str]) -> int:
    depth = deepest = 0
    for token in tokens:
        depth += token in OPERATORS
        deepest = max(deepest, depth)
        depth -= token == CLOSE
    return deepest


# ----------------------------------------------------------------------------------- task


class ListOpsTask(SplitTask):
    """Classify a nested MAX/MIN/MED/SM expression by its value (10 classes)."""

    kind = "classification"
    primary_metric = "accuracy"
    greater_is_better = True
    metric_scale = 1.0
    significance = ACCURACY_SIGNIFICANCE
    Options = ListOpsOptions
    description = "LRA-style ListOps: value of nested MAX/MIN/MED/SUM_MOD expressions; accuracy per length bucket"

    def __init__(self, options: ListOpsOptions, *, cache_dir):
        super().__init__(options, cache_dir=cache_dir)
        self.io: TaskIO | None = None
        self.examples: dict[str, list[dict]] = {}
        self.encoded: dict[str, list[list[int]]] = {}

    def prepare(self) -> TaskIO:
        if self.io is None:
            for split in self.splits:
                self.examples[split] = generate(self.options.size(split), self.options, split)
                self.encoded[split] = [[TOKEN_ID[t] for t in row["tokens"]] for row in self.examples[split]]
            self.io = TaskIO(kind=self.kind, vocab_size=len(VOCAB), pad_id=PAD, max_len=self.options.max_length,
                             n_classes=10)
        return self.io

    def split_size(self, split):
        return len(self.encoded[split])

    def make_batch(self, split: str, indices: list[int]) -> Batch:
        seqs = [self.encoded[split][i] for i in indices]
        tokens, mask = pad_batch(seqs, PAD)
        labels = torch.tensor([self.examples[split][i]["label"] for i in indices], dtype=torch.long)
        return Batch({"tokens": tokens, "padding_mask": mask, "labels": labels}, n_tokens=sum(map(len, seqs)),
                     ids=[self.examples[split][i]["id"] for i in indices])

    def example_lengths(self, split) -> list[int]:
        return [len(s) for s in self.encoded[split]]

    def batch_plan(self, split, batch_size, *, shuffle, generator=None, group_by_length=True) -> list[list[int]]:
        """Always batches of similar lengths when shuffling, whatever train.group_by_length says:
        lengths here span 10x, and random batches would pad most of their compute."""
        return super().batch_plan(split, batch_size, shuffle=shuffle, generator=generator, group_by_length=True)

    def loss(self, model, batch):
        return classification_loss(model, batch)

    def predict(self, model, split: str, *, batch_size: int, device) -> list[int]:
        """Predicted class per example of ``split``, in order."""
        return predict_classes(self, model, split, batch_size=batch_size, device=device)

    def evaluate(self, model, split, *, batch_size, device) -> Evaluation:
        # imported here, not with the plugin: sklearn takes ~1 s to import, and every process
        # that discovers plugins (each grid worker, `attnbench plugins`) would pay it
        from sklearn.metrics import accuracy_score, f1_score
        self.prepare()
        preds = self.predict(model, split, batch_size=batch_size, device=device)
        rows = self.examples[split]
        refs = [r["label"] for r in rows]
        metrics = {"accuracy": float(accuracy_score(refs, preds)),
                   "macro_f1": float(f1_score(refs, preds, labels=list(range(10)), average="macro", zero_division=0))}
        buckets = {}
        for lo, hi in self.options.buckets():
            picked = [i for i, r in enumerate(rows) if lo <= len(r["tokens"]) <= hi]
            buckets[f"acc_len_{lo}_{hi}"] = {"examples": len(picked)}
            if picked:  # an empty bucket has no accuracy; the artifact lists it with 0 examples
                score = float(accuracy_score([refs[i] for i in picked], [preds[i] for i in picked]))
                metrics[f"acc_len_{lo}_{hi}"] = buckets[f"acc_len_{lo}_{hi}"]["accuracy"] = score
        predictions = [{"id": r["id"], "input": " ".join(r["tokens"]), "prediction": p, "reference": r["label"],
                        "length": len(r["tokens"]), "depth": r["depth"]} for r, p in zip(rows, preds)]
        return Evaluation(metrics=metrics, predictions=predictions,
                          artifacts={"length_buckets.json": json.dumps(buckets, indent=1)})

    def attention_examples(self, n: int = 2):
        """The shortest test expressions (a map of a 4096-token input would be unreadable)."""
        self.prepare()
        shortest = sorted(range(len(self.encoded["test"])), key=lambda i: len(self.encoded["test"][i]))[:n]
        return [(self.examples["test"][i]["tokens"], self.make_batch("test", [i])) for i in shortest
                if len(self.encoded["test"][i]) <= 512]


@hookimpl
def register_tasks(register):
    register("listops", ListOpsTask)
