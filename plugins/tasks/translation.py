"""Task ``translation``: sequence to sequence, scored with corpus BLEU and chrF (sacrebleu).

Data: the built-in generator (:mod:`attnbench.plugins.tasks.synthetic_translation`) or any
dataset with a source and a target text column (Multi30k de->en: ``columns: {source: de,
target: en}``). One joint subword vocabulary is trained on the train split's sources and
targets. Translations are decoded (greedy or beam search), detokenized, and scored once over
the whole split, never averaged per batch. BLEU is also reported per source-length bucket
(whitespace tokens), e.g. ``bleu_len_1_10`` ... ``bleu_len_31_inf``: the length effect is the
classic argument for attention.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import sacrebleu
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from attnbench import Batch, Evaluation, ExampleTokens, SplitTask, TaskIO, hookimpl
from attnbench.significance import SacrebleuPairedTest
from attnbench.data import (BOS, EOS, PAD, UNK, DataSource, TokenizerOptions, load_splits, pad_batch, require_columns,
                            train_tokenizer)
from attnbench.errors import BadInputError

from . import synthetic_translation
from .seq2seq_decoding import beam_search, greedy_search, length_sorted_batches

WHERE = "tasks.translation"
DEFAULT_COLUMNS = {"source": "source", "target": "target"}


class DecodeOptions(BaseModel):
    """How translations are generated at evaluation time.

    The output of example i is at most ``max_len_a * source_tokens + max_len_b`` tokens long
    (fairseq's convention), and never longer than the model's target limit."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["greedy", "beam"] = "greedy"
    beam_size: int = Field(4, ge=1, le=64)
    max_len_a: float = Field(1.2, ge=0.0)
    max_len_b: int = Field(10, ge=1)
    length_penalty: float = Field(1.0, ge=0.0, description="beam: score / length**length_penalty")


class TranslationOptions(BaseModel):
    """``tasks.translation`` section of a grid file."""

    model_config = ConfigDict(extra="forbid")
    data: DataSource = Field(default_factory=DataSource)
    tokenizer: TokenizerOptions = Field(default_factory=TokenizerOptions)
    max_len: int = Field(100, gt=0, description="sources and targets are truncated to this many tokens")
    decode: DecodeOptions = Field(default_factory=DecodeOptions)
    length_buckets: list[int] = Field(default_factory=lambda: [10, 20, 30],
                                      description="upper edges of source-length buckets (whitespace tokens)")

    @field_validator("length_buckets")
    @classmethod
    def _increasing(cls, edges: list[int]) -> list[int]:
        if any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"must be strictly increasing positive integers, e.g. [10, 20, 30]; got {edges}")
        return edges


def bucket_names(edges: list[int]) -> list[tuple[str, int, float]]:
    """``[10, 20]`` -> ``[("bleu_len_1_10", 1, 10), ("bleu_len_11_20", 11, 20), ("bleu_len_21_inf", 21, inf)]``."""
    out, low = [], 1
    for edge in edges:
        out.append((f"bleu_len_{low}_{edge}", low, edge))
        low = edge + 1
    out.append((f"bleu_len_{low}_inf", low, math.inf))
    return out


class TranslationTask(SplitTask):
    """Sequence-to-sequence translation with BLEU per source-length bucket."""

    kind = "seq2seq"
    primary_metric = "bleu"
    greater_is_better = True
    metric_scale = 100.0
    significance = SacrebleuPairedTest(sacrebleu.metrics.BLEU)  # corpus BLEU: sacrebleu's paired bootstrap
    Options = TranslationOptions
    description = "translation; corpus BLEU/chrF (sacrebleu) and BLEU per source-length bucket"

    def __init__(self, options: TranslationOptions, *, cache_dir):
        super().__init__(options, cache_dir=cache_dir)
        self.io: TaskIO | None = None
        self.examples: dict[str, list[dict]] = {}  # split -> [{id, source, target}]
        self.sources: dict[str, list[list[int]]] = {}
        self.targets: dict[str, list[list[int]]] = {}  # BOS ... EOS
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
                rows[split] = synthetic_translation.generate(n, data.seed, split)
            return rows
        data = data.model_copy(update={"columns": DEFAULT_COLUMNS | data.columns})
        rows = {}
        for split, ds in load_splits(data, self.splits, f"{WHERE}.data").items():
            require_columns(ds, data, ["source", "target"], f"{WHERE}.data")
            sources, targets = ds[data.columns["source"]], ds[data.columns["target"]]
            rows[split] = [{"id": f"{split}-{i}", "source": s, "target": t} for i, (s, t) in enumerate(zip(sources, targets))]
        return rows

    def prepare(self) -> TaskIO:
        if self.io is not None:
            return self.io
        rows = self._load_rows()
        for split, items in rows.items():
            for pos, row in enumerate(items):
                if not isinstance(row["source"], str) or not isinstance(row["target"], str):
                    raise BadInputError(f"{WHERE}.data: split {split!r} row {pos}: source and target must be strings, "
                                        f"got {type(row['source']).__name__} and {type(row['target']).__name__}")
        train = rows["train"]
        self.tokenizer = train_tokenizer([r["source"] for r in train] + [r["target"] for r in train],
                                         self.options.tokenizer, self.cache_dir)
        max_len = self.options.max_len
        for split, items in rows.items():
            src = self.tokenizer.encode_batch([r["source"] for r in items], add_special_tokens=False)
            tgt = self.tokenizer.encode_batch([r["target"] for r in items], add_special_tokens=False)
            self.sources[split] = [e.ids[:max_len] or [UNK] for e in src]
            self.targets[split] = [[BOS, *e.ids[:max_len], EOS] for e in tgt]
        self.examples = rows
        decode = self.options.decode
        longest_output = int(decode.max_len_a * max_len + decode.max_len_b)
        self.io = TaskIO(kind=self.kind, vocab_size=self.tokenizer.get_vocab_size(), pad_id=PAD, max_len=max_len,
                         bos_id=BOS, eos_id=EOS, max_tgt_len=max(max_len, longest_output) + 2)
        return self.io

    # ----------------------------------------------------------------- batches

    def split_size(self, split):
        return len(self.sources[split])

    def example_lengths(self, split) -> list[int]:
        """Source plus target tokens: a batch pads both sides, so similar sums pad little."""
        return [len(s) + len(t) for s, t in zip(self.sources[split], self.targets[split])]

    def make_batch(self, split: str, indices: list[int]) -> Batch:
        src, src_mask = pad_batch([self.sources[split][i] for i in indices], PAD)
        tgt, _ = pad_batch([self.targets[split][i] for i in indices], PAD)
        tensors = {"src": src, "src_padding_mask": src_mask, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}
        n_tokens = int((~src_mask).sum()) + int((tgt[:, 1:] != PAD).sum())
        return Batch(tensors, n_tokens=n_tokens, ids=[self.examples[split][i]["id"] for i in indices])

    def loss(self, model, batch):
        logits = model(batch["src"], batch["src_padding_mask"], batch["tgt_in"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["tgt_out"].reshape(-1), ignore_index=PAD)

    # -------------------------------------------------------------- evaluation

    def translate(self, model, split: str, *, batch_size: int, device, decode: DecodeOptions | None = None,
                  use_cache: bool = True) -> list[str]:
        """Detokenized translations of every source in ``split``, in order.

        Sources are decoded in batches of similar length (less padding, sentences that end
        together); ``use_cache=False`` forces full recomputation (benchmarks/bench_decoding.py)."""
        self.prepare()
        decode = decode or self.options.decode
        outputs: list[str] = [""] * len(self.sources[split])
        for indices in length_sorted_batches([len(s) for s in self.sources[split]], batch_size):
            batch = self.make_batch(split, indices).to(device)
            src, mask = batch["src"], batch["src_padding_mask"]
            src_lens = (~mask).sum(1)
            max_lens = (decode.max_len_a * src_lens + decode.max_len_b).long().clamp(max=self.io.max_tgt_len - 1)
            common = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, use_cache=use_cache)
            if decode.strategy == "beam":
                ids = beam_search(model, src, mask, max_lens, beam_size=decode.beam_size,
                                  length_penalty=decode.length_penalty, **common)
            else:
                ids = greedy_search(model, src, mask, max_lens, **common)
            for i, text in zip(indices, self.tokenizer.decode_batch(ids, skip_special_tokens=True)):
                outputs[i] = text
        return outputs

    def evaluate(self, model, split, *, batch_size, device) -> Evaluation:
        hypotheses = self.translate(model, split, batch_size=batch_size, device=device)
        rows = self.examples[split]
        references = [r["target"] for r in rows]
        bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
        # Lower-cased BLEU on 13a tokens: the convention of tutorials that report BLEU on
        # lower-cased, tokenised text (e.g. the Multi30k figures people quote); never the headline.
        bleu_lc = sacrebleu.metrics.BLEU(lowercase=True)
        metrics = {"bleu": bleu.corpus_score(hypotheses, [references]).score,
                   "chrf": chrf.corpus_score(hypotheses, [references]).score,
                   "bleu_lc": bleu_lc.corpus_score(hypotheses, [references]).score}
        source_lengths = [len(r["source"].split()) for r in rows]
        buckets = {}
        for name, low, high in bucket_names(self.options.length_buckets):
            picked = [i for i, n in enumerate(source_lengths) if low <= n <= high]
            buckets[name] = {"examples": len(picked)}
            if picked:  # an empty bucket has no BLEU; it is listed in the artifact with 0 examples
                score = bleu.corpus_score([hypotheses[i] for i in picked], [[references[i] for i in picked]]).score
                metrics[name] = buckets[name]["bleu"] = score
        predictions = [{"id": r["id"], "input": r["source"], "prediction": h, "reference": r["target"], "source_length": n}
                       for r, h, n in zip(rows, hypotheses, source_lengths)]
        tags = {"sacrebleu.signature": bleu.get_signature().format(),
                "sacrebleu.bleu_lc_signature": bleu_lc.get_signature().format(),
                "sacrebleu.chrf_signature": chrf.get_signature().format()}
        return Evaluation(metrics=metrics, predictions=predictions, tags=tags,
                          artifacts={"length_buckets.json": json.dumps(buckets, indent=1)})

    def attention_examples(self, n: int = 2):
        self.prepare()
        out = []
        for i in range(min(n, len(self.sources["test"]))):
            source = [self.tokenizer.id_to_token(t) for t in self.sources["test"][i]]
            target = [self.tokenizer.id_to_token(t) for t in self.targets["test"][i][:-1]]  # the decoder's input: tgt_in
            out.append((ExampleTokens(source, target), self.make_batch("test", [i])))
        return out


@hookimpl
def register_tasks(register):
    register("translation", TranslationTask)
