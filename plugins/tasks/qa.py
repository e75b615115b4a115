"""Extractive question answering (SQuAD v1.1 format): predict the answer span in the context.

Input layout (token ids from a subword tokenizer trained on the training questions and
contexts)::

    [CLS] question [SEP] context window [SEP]

The question is cut to ``max_question_len`` tokens; the rest of ``max_len`` holds a window of
the context. Long contexts are covered by **sliding windows**: window starts are
``0, doc_stride, 2*doc_stride, ...`` (token positions in the context, as ``doc_stride`` means in
the original BERT SQuAD code, not the overlap), plus one window aligned to the end of the
context, so every context token is in at least one window.

- **Training** uses only the windows that contain the whole gold answer (the first gold
  answer); windows without it are dropped rather than pointed at ``[CLS]``, because SQuAD
  v1.1 always has an answer and decoding never predicts ``[CLS]``.
- **Evaluation** scores every window of a question: the best span is the one with the
  highest ``start_logit + end_logit`` among spans with start <= end, at most
  ``max_answer_len`` tokens, and both ends inside the context part; the best over all
  windows wins and is cut from the original context through the tokenizer's character
  offsets. Scores: exact match and F1 exactly as the official SQuAD v1.1 script
  (:mod:`squad_metric`), next to the same scores of trivial baselines computed from the data
  alone (:mod:`qa_baselines`, metrics ``trivial_<name>_<metric>``, once per split).

Where one source split feeds several task splits (the offline SQuAD copy has only its
validation split), the task carves it into disjoint, article-aligned slices in the order
train, validation, test: each slice takes its ``n_<split>`` rows, then the next slice starts
at the next article (``title``), so no context is shared between training and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attnbench import Batch, Evaluation, SplitTask, TaskIO, hookimpl
from attnbench.data import (CLS, PAD, SEP, DataSource, TokenizerOptions, column,
                            load_splits, require_columns, train_tokenizer)
from attnbench.errors import BadInputError

from .qa_baselines import ARTIFACT as BASELINES_ARTIFACT, TrivialBaselines, answer_words, score_baselines
from .squad_metric import F1_SIGNIFICANCE, squad_scores
from .synthetic_qa import StoryOptions, generate

WHERE = "tasks.qa"
# Buckets of sentences between the supporting fact and the question (synthetic data only).
DISTANCE_BUCKETS = ((0, 1), (2, 4), (5, 8), (9, None))


class QAOptions(BaseModel):
    """Options of the ``qa`` task (the grid file's ``tasks.qa`` section)."""

    model_config = ConfigDict(extra="forbid")
    data: DataSource = Field(default_factory=DataSource)
    tokenizer: TokenizerOptions = Field(default_factory=lambda: TokenizerOptions(vocab_size=4000, lowercase=True))
    story: StoryOptions = Field(default_factory=StoryOptions, description="synthetic stories (source: synthetic)")
    max_len: int = Field(256, gt=4, description="model limit on [CLS] question [SEP] context [SEP] tokens")
    doc_stride: int = Field(128, gt=0, description="tokens between the starts of consecutive context windows")
    max_answer_len: int = Field(30, gt=0, description="longest answer span (tokens) decoding may return")
    max_question_len: int = Field(64, gt=0, description="questions are cut to this many tokens")

    @model_validator(mode="after")
    def _check_lengths(self):
        room = self.max_len - self.max_question_len - 3
        if room < 1:
            raise ValueError(f"max_len ({self.max_len}) must exceed max_question_len + 3 ({self.max_question_len + 3})")
        if self.doc_stride > room:
            raise ValueError(
                f"doc_stride ({self.doc_stride}) must be <= max_len - max_question_len - 3 ({room}), "
                "otherwise windows would skip context tokens"
            )
        return self


@dataclass
class QAExample:
    """One question with its context and gold answers (texts; the first one's offset trains)."""

    id: str
    context: str
    question: str
    answers: list[str]
    answer_start: int | None
    extra: dict = field(default_factory=dict)


@dataclass
class Window:
    """One model input: a question with one window of its example's context."""

    example: int  # index into the split's examples
    ids: list[int]
    context_pos: int  # sequence position of the window's first context token
    offsets: list[tuple[int, int]]  # character span in the context of each window token
    start: int | None = None  # gold span positions in the sequence, when inside this window
    end: int | None = None


def answer_token_span(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """First and last context tokens that overlap the characters [char_start, char_end)."""
    touching = [i for i, (s, e) in enumerate(offsets) if s < char_end and e > char_start]
    return (touching[0], touching[-1]) if touching else None


def window_starts(n_tokens: int, room: int, stride: int) -> list[int]:
    """Starts of the windows of ``room`` tokens that cover ``n_tokens``: every ``stride``, last aligned to the end."""
    if n_tokens <= room:
        return [0]
    starts = list(range(0, n_tokens - room + 1, stride))
    if starts[-1] + room < n_tokens:
        starts.append(n_tokens - room)
    return starts


def encode_windows(example_index: int, q_ids: list[int], ctx_ids: list[int], ctx_offsets: list[tuple[int, int]],
                   answer: tuple[int, int] | None, options: QAOptions) -> list[Window]:
    """Cut one question + context into windows of at most ``max_len`` tokens."""
    q_ids = q_ids[: options.max_question_len]
    room = options.max_len - len(q_ids) - 3
    context_pos = len(q_ids) + 2
    windows = []
    for start in window_starts(len(ctx_ids), room, options.doc_stride):
        stop = start + room
        ids = [CLS, *q_ids, SEP, *ctx_ids[start:stop], SEP]
        window = Window(example_index, ids, context_pos, list(ctx_offsets[start:stop]))
        if answer is not None and start <= answer[0] and answer[1] < stop:
            window.start = context_pos + answer[0] - start
            window.end = context_pos + answer[1] - start
        windows.append(window)
    return windows


def collate(windows: list[Window], indices: list[int]) -> Batch:
    """Pad a list of windows into a Batch (``start``/``end`` point at [CLS] where unknown)."""
    width = max(len(w.ids) for w in windows)
    tokens = torch.full((len(windows), width), PAD, dtype=torch.long)
    for row, w in enumerate(windows):
        tokens[row, : len(w.ids)] = torch.tensor(w.ids, dtype=torch.long)
    start = torch.tensor([w.start if w.start is not None else 0 for w in windows], dtype=torch.long)
    end = torch.tensor([w.end if w.end is not None else 0 for w in windows], dtype=torch.long)
    padding_mask = tokens == PAD
    n_tokens = int((~padding_mask).sum())
    return Batch({"tokens": tokens, "padding_mask": padding_mask, "start": start, "end": end}, n_tokens, list(indices))


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor, max_answer_len: int):
    """Per row, the (score, start, end) maximizing start+end logit over valid spans.

    ``allowed`` (B, L) marks positions a span may use (the context part); valid spans have
    start <= end < start + max_answer_len. Rows without any allowed position score -inf.
    """
    length = start_logits.shape[1]
    pos = torch.arange(length, device=start_logits.device)
    band = (pos[None, :] >= pos[:, None]) & (pos[None, :] < pos[:, None] + max_answer_len)
    valid = band[None] & allowed[:, :, None] & allowed[:, None, :]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]
    scores = scores.masked_fill(~valid, float("-inf")).flatten(1)
    best, flat = scores.max(dim=1)
    return best, flat // length, flat % length


def masked_logits(logits: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    return logits.float().masked_fill(padding_mask, torch.finfo(torch.float32).min)


class QATask(SplitTask):
    """Extractive QA: span start/end prediction, scored by SQuAD v1.1 EM and F1."""

    kind = "span"
    primary_metric = "f1"
    greater_is_better = True
    metric_scale = 100.0
    significance = F1_SIGNIFICANCE
    Options = QAOptions
    description = "extractive QA (SQuAD v1.1 format; synthetic default: bAbI-like stories), EM/F1"

    def __init__(self, options: QAOptions, *, cache_dir):
        super().__init__(options, cache_dir=cache_dir)
        self.examples: dict[str, list[QAExample]] = {}
        self.windows: dict[str, list[Window]] = {}
        self.tokenizer = None
        self._io: TaskIO | None = None
        self._baselines: dict[str, TrivialBaselines] = {}

    # ---- data -------------------------------------------------------------------------

    def prepare(self) -> TaskIO:
        if self._io is not None:
            return self._io
        opts = self.options
        self.examples = self._synthetic_examples() if opts.data.source == "synthetic" else self._dataset_examples()
        train = self.examples["train"]
        texts = [ex.question for ex in train] + list(dict.fromkeys(ex.context for ex in train))
        self.tokenizer = train_tokenizer(texts, opts.tokenizer, self.cache_dir)
        self.windows = {split: self._encode(examples) for split, examples in self.examples.items()}
        if not any(w.start is not None for w in self.windows["train"]):
            raise BadInputError(f"{WHERE}.data: no training answer could be located in its context; check the answers column")
        self._io = TaskIO(kind="span", vocab_size=self.tokenizer.get_vocab_size(), pad_id=PAD, max_len=opts.max_len,
                          extra={"cls_id": CLS, "sep_id": SEP})
        return self._io

    def _synthetic_examples(self) -> dict[str, list[QAExample]]:
        data = self.options.data
        out = {}
        for split in self.splits:
            rows = generate(split, data.limit(split) or 0, data.seed, self.options.story)
            out[split] = [self._row_to_example(row, split, i, "story") for i, row in enumerate(rows)]
        return out

    def _dataset_examples(self) -> dict[str, list[QAExample]]:
        data = self.options.data
        where = f"{WHERE}.data"
        sources = {split: data.splits.get(split, split) for split in self.splits}
        # Load each source split once, unlimited; limits are applied (or slices carved) below.
        representatives = list({src: split for split, src in reversed(sources.items())}.values())
        unlimited = data.model_copy(update={"n_train": None, "n_validation": None, "n_test": None})
        loaded = load_splits(unlimited, representatives, where)
        by_source = {sources[split]: ds for split, ds in loaded.items()}
        out = {}
        for src, ds in by_source.items():
            require_columns(ds, data, ["id", "context", "question", "answers"], where)
            members = [split for split in self.splits if sources[split] == src]
            for split, part in self._carve(ds, members, src).items():
                out[split] = [self._row_to_example(row, split, i, src) for i, row in enumerate(part)]
        return out

    def _carve(self, ds, members: list[str], src: str) -> dict:
        """Split one dataset into consecutive, article-aligned slices for ``members``."""
        data = self.options.data
        if len(members) == 1:
            limit = data.limit(members[0])
            return {members[0]: ds.select(range(min(limit, len(ds)))) if limit is not None else ds}
        title = column(data, "title")
        keys = ds[title] if title in ds.column_names else ds[column(data, "context")]
        parts, cursor = {}, 0
        for i, split in enumerate(members):
            limit = data.limit(split)
            if limit is None and i < len(members) - 1:
                raise BadInputError(
                    f"{WHERE}.data.n_{split}: must be set (not null) because {members} all read source "
                    f"split {src!r} and are carved from it in this order; only the last may take the rest"
                )
            stop = len(ds) if limit is None else min(cursor + limit, len(ds))
            if stop <= cursor:
                raise BadInputError(
                    f"{WHERE}.data.n_{split}: source split {src!r} ({len(ds)} rows) has no rows left for {split!r} "
                    f"after {members[:i]}; lower their n_* limits"
                )
            parts[split] = ds.select(range(cursor, stop))
            cursor = stop
            while 0 < cursor < len(ds) and keys[cursor] == keys[cursor - 1]:
                cursor += 1  # finish the article so no context leaks into the next slice
        return parts

    def _row_to_example(self, row: dict, split: str, index: int, src: str) -> QAExample:
        data = self.options.data
        answers = row[column(data, "answers")]
        texts = list(answers.get("text") or []) if isinstance(answers, dict) else []
        starts = list(answers.get("answer_start") or []) if isinstance(answers, dict) else []
        if not texts:
            raise BadInputError(
                f"{WHERE}.data: row {index} of split {src!r} (id {row.get(column(data, 'id'))!r}) has no gold answer; "
                "column 'answers' must be {text: [str, ...], answer_start: [int, ...]} with at least one answer"
            )
        extra = {"support_distance": row["support_distance"]} if "support_distance" in row else {}
        return QAExample(
            id=str(row[column(data, "id")]), context=row[column(data, "context")], question=row[column(data, "question")],
            answers=texts, answer_start=int(starts[0]) if starts else None, extra=extra,
        )

    def _encode(self, examples: list[QAExample]) -> list[Window]:
        questions = self.tokenizer.encode_batch([ex.question for ex in examples], add_special_tokens=False)
        unique_contexts = list(dict.fromkeys(ex.context for ex in examples))
        encoded = dict(zip(unique_contexts, self.tokenizer.encode_batch(unique_contexts, add_special_tokens=False)))
        windows = []
        for i, (ex, q) in enumerate(zip(examples, questions)):
            ctx = encoded[ex.context]
            answer = None
            if ex.answer_start is not None:
                answer = answer_token_span(ctx.offsets, ex.answer_start, ex.answer_start + len(ex.answers[0]))
            windows.extend(encode_windows(i, q.ids, ctx.ids, ctx.offsets, answer, self.options))
        return windows

    # ---- batches and loss -------------------------------------------------------------

    def _answer_windows(self, split: str) -> list[int]:
        """Indices of the windows that hold their gold answer (what training sees)."""
        self._prepare_split(split)
        return [i for i, w in enumerate(self.windows[split]) if w.start is not None]

    def example_lengths(self, split) -> list[int]:
        """Tokens of each window that contains its answer (the windows training sees)."""
        return [len(self.windows[split][i].ids) for i in self._answer_windows(split)]

    def split_size(self, split: str) -> int:
        """Windows that contain their answer: the examples training batches are made of."""
        return len(self._answer_windows(split))

    def batch_plan(self, split, batch_size, *, shuffle, generator=None, group_by_length=False) -> list[list[int]]:
        """The base plan over the answered windows (see :meth:`split_size`), as window indices."""
        answered = self._answer_windows(split)
        plan = super().batch_plan(split, batch_size, shuffle=shuffle, generator=generator,
                                  group_by_length=group_by_length)
        return [[answered[i] for i in batch] for batch in plan]

    def make_batch(self, split: str, indices: list[int]) -> Batch:
        """Windows ``indices`` of ``split``, padded to the batch's longest."""
        return collate([self.windows[split][i] for i in indices], indices)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean of the start and end cross-entropies (padding positions can never be chosen)."""
        start_logits, end_logits = model(batch["tokens"], batch["padding_mask"])
        mask = batch["padding_mask"]
        return 0.5 * (F.cross_entropy(masked_logits(start_logits, mask), batch["start"])
                      + F.cross_entropy(masked_logits(end_logits, mask), batch["end"]))

    # ---- evaluation -------------------------------------------------------------------

    def evaluate(self, model: torch.nn.Module, split: str, *, batch_size: int, device: torch.device) -> Evaluation:
        """Best span per question across its windows, scored with SQuAD v1.1 EM/F1."""
        self._answer_windows(split)  # validates the split name
        examples, windows = self.examples[split], self.windows[split]
        best: dict[int, tuple[float, str]] = {}
        for at in range(0, len(windows), batch_size):
            chunk = list(range(at, min(at + batch_size, len(windows))))
            batch = collate([windows[i] for i in chunk], chunk).to(device)
            start_logits, end_logits = model(batch["tokens"], batch["padding_mask"])
            allowed = torch.zeros_like(batch["padding_mask"])
            for row, i in enumerate(chunk):
                w = windows[i]
                allowed[row, w.context_pos: w.context_pos + len(w.offsets)] = True
            scores, starts, ends = best_spans(start_logits, end_logits, allowed, self.options.max_answer_len)
            for row, i in enumerate(chunk):
                score = float(scores[row])
                w = windows[i]
                if score == float("-inf") or (w.example in best and best[w.example][0] >= score):
                    continue
                first, last = int(starts[row]) - w.context_pos, int(ends[row]) - w.context_pos
                text = examples[w.example].context[w.offsets[first][0]: w.offsets[last][1]].strip()
                best[w.example] = (score, text)

        predictions = [
            {"id": ex.id, "input": ex.question, "prediction": best.get(i, (0.0, ""))[1], "references": ex.answers, **ex.extra}
            for i, ex in enumerate(examples)
        ]
        metrics = squad_scores([p["prediction"] for p in predictions], [p["references"] for p in predictions])
        metrics.update(self._distance_metrics(predictions))
        baselines = self.trivial_baselines(split)
        metrics.update(baselines.metrics())
        return Evaluation(metrics=metrics, predictions=predictions, artifacts={BASELINES_ARTIFACT: baselines.artifact(split)})

    def trivial_baselines(self, split: str) -> TrivialBaselines:
        """EM/F1 of the data-only baselines on ``split`` (:mod:`qa_baselines`), computed once per split.

        Their answer length k comes from the training answers, never from the split scored."""
        self._prepare_split(split)
        if split not in self._baselines:
            examples = self.examples[split]
            k = answer_words([ex.answers for ex in self.examples["train"]])
            self._baselines[split] = score_baselines([ex.context for ex in examples], [ex.question for ex in examples],
                                                     [ex.answers for ex in examples], k)
        return self._baselines[split]

    @staticmethod
    def _distance_metrics(predictions: list[dict]) -> dict[str, float]:
        """F1 by sentences between supporting fact and question (synthetic stories only)."""
        out = {}
        for lo, hi in DISTANCE_BUCKETS:
            chosen = [p for p in predictions if "support_distance" in p
                      and lo <= p["support_distance"] and (hi is None or p["support_distance"] <= hi)]
            if chosen:
                name = f"f1_dist_{lo}_{hi}" if hi is not None else f"f1_dist_{lo}_plus"
                out[name] = squad_scores([p["prediction"] for p in chosen], [p["references"] for p in chosen])["f1"]
        return out

    def attention_examples(self, n: int = 2) -> list[tuple[list[str], Batch]]:
        """The first ``n`` validation windows that hold their answer, with their token strings."""
        self.prepare()
        out = []
        for i in self._answer_windows("validation")[:n]:
            w = self.windows["validation"][i]
            out.append(([self.tokenizer.id_to_token(t) for t in w.ids], collate([w], [i])))
        return out


@hookimpl
def register_tasks(register):
    register("qa", QATask)
