"""Trivial baselines of extractive QA, computed from the data alone (no model, deterministic).

They put a model's EM/F1 in context, scored with the official SQuAD v1.1 code
(:func:`squad_metric.squad_scores`) against all gold answers, and logged as
``trivial_<name>_exact_match`` / ``trivial_<name>_f1`` (:func:`attnbench.run.record.trivial_metric`):

- ``first_words`` (position only): the first *k* words of the context, where *k* is the
  median length of the training answers (first gold, in normalised words). It never reads
  the question: the floor of the task.
- ``overlap_sentence`` (retrieval without locating): the whole context sentence that shares
  the most question words with the question (normalised as the metric normalises, a short
  list of function words left out); ties go to the earliest sentence. It shows what finding
  the right sentence is worth before a model places a span inside it: high recall, low
  precision, EM near 0 on SQuAD.
- ``overlap_window`` (retrieval plus a length prior, in the spirit of the sliding-window
  baseline of the SQuAD paper): inside that sentence, the *k*-word window of words that are
  neither question words nor function words, nearest to a question word the sentence shares
  (ties: the earliest); answers sit next to the words the question repeats, and are not those
  words. Without a window (no shared word, or no such *k* words) it takes the sentence's first
  *k* words.

Sentences are split by a rule (a ``.``, ``!`` or ``?``, optional closing quotes or
brackets, then whitespace), so an abbreviation such as "St. Louis" splits one sentence in
two; the baselines only have to be cheap and reproducible.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from attnbench.run.record import trivial_metric

from .squad_metric import normalize_answer, squad_scores

# Words that say what is asked, not about what: question words, auxiliaries, pronouns,
# determiners, common prepositions and conjunctions. (scikit-learn's English list would also
# drop content words such as "system", "fire", "bill" and the numbers "two" or "fifty".)
STOP_WORDS = frozenset("""
what which who whom whose when where why how
is are was were be been being am do does did done has have had can could will would shall should may might must
a an the this that these those it its they them their he she his her him we our you your i my me
of in on at to for from by with about as into onto than then and or but not no nor so if there here also
""".split())

SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")
WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Word:
    """One whitespace-separated word of a context: its characters and its normalised tokens."""

    start: int
    end: int
    tokens: frozenset[str]


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    words: tuple[Word, ...]

    def tokens(self) -> set[str]:
        return {t for w in self.words for t in w.tokens}


def split_sentences(context: str) -> list[Sentence]:
    """The context's sentences, each with its words (character offsets into ``context``)."""
    sentences, start = [], 0
    for cut in [m.end() for m in SENTENCE_BREAK.finditer(context)] + [len(context)]:
        words = tuple(Word(m.start() + start, m.end() + start, frozenset(normalize_answer(m.group()).split()))
                      for m in WORD.finditer(context[start:cut]))
        if words:
            sentences.append(Sentence(words[0].start, words[-1].end, words))
        start = cut
    return sentences


def question_words(question: str) -> set[str]:
    """The question's normalised tokens, function words left out."""
    return set(normalize_answer(question).split()) - STOP_WORDS


def best_sentence(sentences: Sequence[Sentence], asked: set[str]) -> Sentence:
    """The sentence sharing the most question words (the earliest of equals)."""
    return max(sentences, key=lambda s: len(asked & s.tokens()))  # max keeps the first maximum


def span_text(context: str, words: Sequence[Word]) -> str:
    return context[words[0].start: words[-1].end] if words else ""


def first_words(context: str, sentences: Sequence[Sentence], asked: set[str], k: int) -> str:
    words = [w for s in sentences for w in s.words]
    return span_text(context, words[:k])


def overlap_sentence(context: str, sentences: Sequence[Sentence], asked: set[str], k: int) -> str:
    return span_text(context, best_sentence(sentences, asked).words) if sentences else ""


def is_candidate(word: Word, asked: set[str]) -> bool:
    """A word an answer window may hold: some normalised token, none asked, none a function word."""
    return bool(word.tokens) and not word.tokens & asked and not word.tokens & STOP_WORDS


def overlap_window(context: str, sentences: Sequence[Sentence], asked: set[str], k: int) -> str:
    if not sentences:
        return ""
    words = best_sentence(sentences, asked).words
    shared = [i for i, w in enumerate(words) if w.tokens & asked]
    windows = [i for i in range(max(len(words) - k + 1, 1)) if all(is_candidate(w, asked) for w in words[i: i + k])]
    if not shared or not windows:
        return span_text(context, words[:k])

    def distance(i: int) -> int:  # words between the window and the nearest shared word
        return min(i - j if j < i else j - (i + k - 1) for j in shared)

    start = min(windows, key=distance)
    return span_text(context, words[start: start + k])


@dataclass(frozen=True)
class Baseline:
    name: str
    description: str
    predict: Callable[[str, Sequence[Sentence], set[str], int], str]


BASELINES = (
    Baseline("first_words", "the first k={k} context words (k: median training answer length in normalised "
                            "words; position only, the question unread)", first_words),
    Baseline("overlap_sentence", "the whole context sentence sharing the most question words (function words "
                                 "left out; ties: the earliest)", overlap_sentence),
    Baseline("overlap_window", "in that sentence, the k={k}-word window of words that are neither question "
                               "words nor function words, nearest to a shared question word (ties: the earliest)", overlap_window),
)
ARTIFACT = "trivial_baselines.json"


def answer_words(answers: Sequence[Sequence[str]]) -> int:
    """Median length in normalised words of the first gold answers (at least 1)."""
    lengths = [len(normalize_answer(golds[0]).split()) for golds in answers if golds]
    return max(1, statistics.median_low(lengths)) if lengths else 1


@dataclass
class TrivialBaselines:
    """Each baseline's predictions and EM/F1 on one split (computed once, then reused)."""

    k: int
    predictions: dict[str, list[str]]
    scores: dict[str, dict[str, float]]

    def metrics(self) -> dict[str, float]:
        return {trivial_metric(name, m): v for name, s in self.scores.items() for m, v in s.items()}

    def artifact(self, split: str) -> str:
        """``trivial_baselines.json``: what each baseline is and its scores on ``split``."""
        described = {b.name: {"description": b.description.format(k=self.k), **self.scores[b.name]} for b in BASELINES}
        return json.dumps({"split": split, "k_answer_words": self.k, "baselines": described}, indent=2) + "\n"


def score_baselines(contexts: Sequence[str], questions: Sequence[str], references: Sequence[Sequence[str]],
                    k: int) -> TrivialBaselines:
    """Predict with every baseline and score with the official EM/F1; each context is split once."""
    split_once = {c: split_sentences(c) for c in dict.fromkeys(contexts)}
    asked = [question_words(q) for q in questions]
    predictions = {b.name: [b.predict(c, split_once[c], a, k) for c, a in zip(contexts, asked)] for b in BASELINES}
    scores = {name: squad_scores(preds, references) for name, preds in predictions.items()}
    return TrivialBaselines(k, predictions, scores)
