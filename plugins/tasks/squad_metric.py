"""Exact match and F1 as the official SQuAD v1.1 evaluation defines them.

Both compare *normalized* answers: lowercased, punctuation removed, the articles a/an/the
removed, whitespace collapsed. EM is 1 when the normalized strings are equal; F1 is the
harmonic mean of precision and recall over the bag of normalized tokens. A prediction scores
the best value over its gold answers; corpus scores are means over questions, times 100.

No library in our stack ships this definition, so it lives here (kept short on purpose, to be
checked line by line against the official script).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Sequence

from attnbench.significance import PerExampleScore, references

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop articles, collapse whitespace (in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-overlap F1; 0 when nothing overlaps (also when both sides normalize to empty, as v1.1 does)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:
    """The metric against the closest gold answer (SQuAD keeps several answers per question)."""
    return max(metric(prediction, gold) for gold in golds)


def squad_scores(predictions: Iterable[str], references: Iterable[Sequence[str]]) -> dict[str, float]:
    """Corpus ``exact_match`` and ``f1`` (0-100) of predictions against lists of gold answers."""
    em_total = f1_total = 0.0
    count = 0
    for prediction, golds in zip(predictions, references, strict=True):
        if not golds:
            raise ValueError("every question needs at least one gold answer")
        em_total += best_over_golds(exact_match, prediction, golds)
        f1_total += best_over_golds(f1, prediction, golds)
        count += 1
    if count == 0:
        return {"exact_match": 0.0, "f1": 0.0}
    return {"exact_match": 100.0 * em_total / count, "f1": 100.0 * f1_total / count}


def example_f1(record: dict) -> float:
    """F1 (0-1) of one predictions.jsonl record against its closest gold answer."""
    return best_over_golds(f1, str(record.get("prediction", "")), references(record))


# corpus F1 is the mean of example_f1 (times 100): a paired bootstrap over questions tests it
F1_SIGNIFICANCE = PerExampleScore(example_f1)
