"""Task ``reverse``: sequence to sequence where the target is the source reversed (or permuted).

The source is a string of random symbols whose length is drawn uniformly from
``[min_len, max_len]`` (default 10..100). ``mode`` decides the target:

- ``reverse``: the source backwards. Target token t comes from source position n - 1 - t,
  so the first output needs the last input and the dependency distance grows with length.
- ``permutation``: a fixed shuffle of positions per source length (drawn from the data
  seed, the same for every split): target token t is source token ``perm_n[t]``.
- ``copy``: the source itself (the easy control).

An encoder-decoder without attention must squeeze the whole source into one vector, so its
accuracy falls with length; attention reads each source position directly.

Ids (fixed, no tokenizer): 0..5 are attnbench's special tokens (PAD, UNK, BOS, EOS, SEP,
CLS); symbol ``k`` (1..``vocab``) is id ``5 + k``. Targets are ``BOS ... EOS``.

Evaluation decodes greedily (at most ``n + 1`` tokens for a source of n) and reports
``accuracy`` (per token: target positions whose token is right, over all target tokens),
``sequence_accuracy`` (whole target right, nothing extra) and ``acc_len_<lo>_<hi>``: per-token
accuracy of the sources whose length is in ``[lo, hi]`` (buckets of ``bucket_width``).
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator

from attnbench import Batch, Evaluation, ExampleTokens, SplitSizes, SplitTask, TaskIO, hookimpl
from attnbench.data import BOS, EOS, PAD, SPECIAL_TOKENS, pad_batch
from attnbench.tasks import SPLITS

from .seq2seq_decoding import greedy_search, length_sorted_batches

SPLIT_INDEX = {split: i for i, split in enumerate(SPLITS)}
FIRST_SYMBOL = len(SPECIAL_TOKENS)
TASK_STREAM = 18  # keeps this task's random streams apart from the other probes'
PERMUTATION_STREAM = 3  # the fixed permutations, shared by all splits


class ReverseOptions(SplitSizes):
    """``tasks.reverse`` section of a grid file."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["reverse", "permutation", "copy"] = "reverse"
    min_len: int = Field(10, ge=1, description="shortest source, in symbols")
    max_len: int = Field(100, ge=1, description="longest source, in symbols")
    vocab: int = Field(20, ge=2, description="number of distinct symbols")
    bucket_width: int = Field(10, ge=1, description="width of the length buckets of acc_len_*")
    seed: int = Field(1234, ge=0, description="data seed (not the training seed)")

    @model_validator(mode="after")
    def _range(self):
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must not exceed max_len ({self.max_len})")
        return self

    def buckets(self) -> list[tuple[int, int]]:
        """``(lo, hi)`` source-length ranges of ``bucket_width`` from ``min_len``; a last bucket
        narrower than half the width joins the one before it (10..100 gives 10-19 ... 90-100)."""
        out = [(lo, min(lo + self.bucket_width - 1, self.max_len))
               for lo in range(self.min_len, self.max_len + 1, self.bucket_width)]
        if len(out) > 1 and out[-1][1] - out[-1][0] + 1 < self.bucket_width / 2:
            out[-2:] = [(out[-2][0], out[-1][1])]
        return out


def permutation(n: int, seed: int) -> list[int]:
    """The fixed permutation of positions for sources of length ``n``."""
    return np.random.default_rng([seed, n, PERMUTATION_STREAM, TASK_STREAM]).permutation(n).tolist()


def target_for(source: list[int], mode: str, seed: int) -> list[int]:
    """The target symbols of ``source`` under ``mode`` (without BOS/EOS)."""
    if mode == "reverse":
        return source[::-1]
    if mode == "permutation":
        return [source[i] for i in permutation(len(source), seed)]
    return list(source)


def generate(n: int, opts: ReverseOptions, split: str) -> list[dict]:
    """``n`` examples ``{id, source, target}`` (symbol ids) for ``split``, deterministic per ``opts.seed``."""
    rng = np.random.default_rng([opts.seed, SPLIT_INDEX[split], TASK_STREAM])
    lengths = rng.integers(opts.min_len, opts.max_len + 1, size=n)
    rows = []
    for i, length in enumerate(lengths.tolist()):
        source = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + opts.vocab, size=length).tolist()
        rows.append({"id": f"{split}-{i}", "source": source, "target": target_for(source, opts.mode, opts.seed)})
    return rows


def token_matches(prediction: list[int], reference: list[int]) -> int:
    """Target positions whose predicted token is right (a missing or extra token is wrong)."""
    return sum(p == r for p, r in zip(prediction, reference))


class ReverseTask(SplitTask):
    """Output the source reversed (or permuted, or copied); accuracy by source length."""

    kind = "seq2seq"
    primary_metric = "accuracy"
    greater_is_better = True
    metric_scale = 1.0  # per-token accuracy pools tokens over examples: no per-example test declared
    Options = ReverseOptions
    description = "reverse/permute/copy random symbols; token and sequence accuracy per source-length bucket"

    def __init__(self, options: ReverseOptions, *, cache_dir):
        super().__init__(options, cache_dir=cache_dir)
        self.io: TaskIO | None = None
        self.examples: dict[str, list[dict]] = {}

    def prepare(self) -> TaskIO:
        if self.io is None:
            self.examples = {split: generate(self.options.size(split), self.options, split) for split in SPLITS}
            n = self.options.max_len
            self.io = TaskIO(kind=self.kind, vocab_size=FIRST_SYMBOL + self.options.vocab, pad_id=PAD, max_len=n,
                             bos_id=BOS, eos_id=EOS, max_tgt_len=n + 2)
        return self.io

    def split_size(self, split):
        return len(self.examples[split])

    def example_lengths(self, split) -> list[int]:
        return [len(r["source"]) + len(r["target"]) for r in self.examples[split]]

    def make_batch(self, split: str, indices: list[int]) -> Batch:
        rows = [self.examples[split][i] for i in indices]
        src, src_mask = pad_batch([r["source"] for r in rows], PAD)
        tgt, _ = pad_batch([[BOS, *r["target"], EOS] for r in rows], PAD)
        tensors = {"src": src, "src_padding_mask": src_mask, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}
        n_tokens = int((~src_mask).sum()) + int((tgt[:, 1:] != PAD).sum())
        return Batch(tensors, n_tokens=n_tokens, ids=[r["id"] for r in rows])

    def loss(self, model, batch):
        logits = model(batch["src"], batch["src_padding_mask"], batch["tgt_in"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["tgt_out"].reshape(-1), ignore_index=PAD)

    def decode(self, model, split: str, *, batch_size: int, device) -> list[list[int]]:
        """Greedy outputs (ids without BOS/EOS) for every source of ``split``, in order."""
        self.prepare()
        outputs: list[list[int]] = [[] for _ in self.examples[split]]
        for indices in length_sorted_batches([len(r["source"]) for r in self.examples[split]], batch_size):
            batch = self.make_batch(split, indices).to(device)
            max_lens = (~batch["src_padding_mask"]).sum(1) + 1  # the target is as long as the source
            decoded = greedy_search(model, batch["src"], batch["src_padding_mask"], max_lens,
                                    bos_id=BOS, eos_id=EOS, pad_id=PAD)
            for i, ids in zip(indices, decoded):
                outputs[i] = ids
        return outputs

    def evaluate(self, model, split, *, batch_size, device) -> Evaluation:
        outputs = self.decode(model, split, batch_size=batch_size, device=device)
        rows = self.examples[split]
        matches = [token_matches(out, r["target"]) for out, r in zip(outputs, rows)]
        metrics = {"accuracy": sum(matches) / sum(len(r["target"]) for r in rows),
                   "sequence_accuracy": float(np.mean([out == r["target"] for out, r in zip(outputs, rows)]))}
        buckets = {}
        for lo, hi in self.options.buckets():
            picked = [i for i, r in enumerate(rows) if lo <= len(r["source"]) <= hi]
            buckets[f"acc_len_{lo}_{hi}"] = {"examples": len(picked)}
            if picked:  # an empty bucket has no accuracy; the artifact lists it with 0 examples
                score = sum(matches[i] for i in picked) / sum(len(rows[i]["target"]) for i in picked)
                metrics[f"acc_len_{lo}_{hi}"] = buckets[f"acc_len_{lo}_{hi}"]["accuracy"] = score
        predictions = [{"id": r["id"], "input": _text(r["source"]), "prediction": _text(out), "reference": _text(r["target"]),
                        "source_length": len(r["source"]), "correct_tokens": m}
                       for r, out, m in zip(rows, outputs, matches)]
        return Evaluation(metrics=metrics, predictions=predictions,
                          artifacts={"length_buckets.json": json.dumps(buckets, indent=1)})

    def attention_examples(self, n: int = 2):
        self.prepare()
        shortest = sorted(range(len(self.examples["test"])), key=lambda i: len(self.examples["test"][i]["source"]))[:n]
        rows = self.examples["test"]
        # the decoder reads BOS and the target (tgt_in in make_batch)
        return [(ExampleTokens(_text(rows[i]["source"]).split(), _text([BOS, *rows[i]["target"]]).split()),
                 self.make_batch("test", [i])) for i in shortest]


def _text(ids: list[int]) -> str:
    """Symbols as numbers 1..vocab (special tokens by name)."""
    return " ".join(SPECIAL_TOKENS[t] if t < FIRST_SYMBOL else str(t - FIRST_SYMBOL + 1) for t in ids)


@hookimpl
def register_tasks(register):
    register("reverse", ReverseTask)
