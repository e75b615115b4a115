"""Trivial QA baselines: hand-checked predictions and scores, the task's metrics and artifact, real SQuAD."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import pytest
import torch
from torch import nn

from attnbench.config import TrainConfig
from attnbench.plugins.tasks import qa_baselines as qb
from attnbench.plugins.tasks.qa import QATask
from attnbench.run.training import evaluate_split
from attnbench.run.record import parse_trivial_metric, trivial_metric
from conftest import SHARED_DATA

CONTEXT = "The cat sat on the mat. Paris is the capital of France. The Eiffel Tower stands in Paris."
QUESTIONS = ["What is the capital of France?", "Which tower stands in Paris?"]
GOLDS = [["Paris"], ["The Eiffel Tower"]]


def test_sentences_split_after_end_marks_and_closing_quotes_only():
    text = 'He said "Go." Then he left. It is 3.5 m wide! Really?  Yes'
    assert [text[s.start: s.end] for s in qb.split_sentences(text)] == [
        'He said "Go."', "Then he left.", "It is 3.5 m wide!", "Really?", "Yes"]


def test_question_words_drop_function_words_and_normalise():
    assert qb.question_words("What is the capital of France?") == {"capital", "france"}
    assert qb.answer_words([["Paris"], ["the Eiffel Tower"], ["in France now", "France"]]) == 2


def test_each_baseline_predicts_the_span_worked_out_by_hand():
    sentences = qb.split_sentences(CONTEXT)
    predict = {b.name: b.predict for b in qb.BASELINES}
    asked = [qb.question_words(q) for q in QUESTIONS]
    # Q1 shares {capital, france} with sentence 2 only; its one word neither asked nor a
    # function word is "Paris", right before the shared "capital".
    assert predict["first_words"](CONTEXT, sentences, asked[0], 1) == "The"
    assert predict["overlap_sentence"](CONTEXT, sentences, asked[0], 1) == "Paris is the capital of France."
    assert predict["overlap_window"](CONTEXT, sentences, asked[0], 1) == "Paris"
    # Q2 shares {tower, stands, paris} with sentence 3 (3 words) and {paris} with sentence 2.
    assert predict["overlap_sentence"](CONTEXT, sentences, asked[1], 1) == "The Eiffel Tower stands in Paris."
    assert predict["overlap_window"](CONTEXT, sentences, asked[1], 1) == "Eiffel"
    assert predict["first_words"](CONTEXT, sentences, asked[1], 3) == "The cat sat"


def test_ties_go_to_the_earliest_sentence_and_the_nearest_window():
    sentences = qb.split_sentences(CONTEXT)
    paris = qb.question_words("Where is Paris?")  # sentences 2 and 3 both mention Paris
    assert qb.overlap_sentence(CONTEXT, sentences, paris, 1) == "Paris is the capital of France."
    # In sentence 2, "capital" (3 words after "Paris") is nearer than "France." (5 after).
    assert qb.overlap_window(CONTEXT, sentences, paris, 1) == "capital"
    nothing = qb.question_words("Why?")  # no shared word: the first sentence, its first k words
    assert qb.overlap_sentence(CONTEXT, sentences, nothing, 2) == "The cat sat on the mat."
    assert qb.overlap_window(CONTEXT, sentences, nothing, 2) == "The cat"


def test_scores_are_the_official_em_and_f1_of_those_predictions():
    result = qb.score_baselines([CONTEXT, CONTEXT], QUESTIONS, GOLDS, k=1)
    # overlap_sentence: "paris is capital of france" vs "paris": P 1/5, R 1 -> 1/3;
    # "eiffel tower stands in paris" vs "eiffel tower": P 2/5, R 1 -> 4/7.
    assert result.scores["overlap_sentence"] == pytest.approx({"exact_match": 0.0, "f1": 100 * (1 / 3 + 4 / 7) / 2})
    # overlap_window: "Paris" exact; "Eiffel" vs "eiffel tower": P 1, R 1/2 -> 2/3.
    assert result.scores["overlap_window"] == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2})
    assert result.scores["first_words"] == {"exact_match": 0.0, "f1": 0.0}  # "The" normalises to nothing
    assert result.metrics()["trivial_overlap_window_exact_match"] == 50.0
    artifact = json.loads(result.artifact("test"))
    assert artifact["k_answer_words"] == 1 and artifact["split"] == "test"
    assert "k=1 context words" in artifact["baselines"]["first_words"]["description"]
    assert artifact["baselines"]["overlap_window"]["exact_match"] == 50.0


def test_trivial_metric_names_parse_back_against_the_task_metrics():
    own = {"f1", "exact_match", "f1_dist_0_1"}
    assert parse_trivial_metric(trivial_metric("overlap_sentence", "exact_match"), own) == ("overlap_sentence",
                                                                                            "exact_match")
    assert parse_trivial_metric(trivial_metric("first_words", "f1"), own) == ("first_words", "f1")
    assert parse_trivial_metric("f1_dist_0_1", own) is None


class Uniform(nn.Module):
    """Equal logits everywhere: the model's prediction does not matter here."""

    def forward(self, tokens, padding_mask):
        zeros = torch.zeros(tokens.shape, dtype=torch.float32)
        return zeros, zeros


def test_task_logs_the_baselines_and_their_artifact_computing_them_once_per_split(tmp_path):
    raw = {"data": {"n_train": 60, "n_validation": 20, "n_test": 30}, "tokenizer": {"vocab_size": 200}}
    task = QATask(QATask.parse_options(raw, "tasks.qa"), cache_dir=tmp_path)
    task.prepare()
    evaluation = evaluate_split(task, Uniform(), "test", TrainConfig(eval_batch_size=16), torch.device("cpu"))
    for name in ("first_words", "overlap_sentence", "overlap_window"):
        for metric in ("exact_match", "f1"):
            assert 0.0 <= evaluation.metrics[trivial_metric(name, metric)] <= 100.0
    # Stories: the first word is a name, never a place; a movement sentence has the place in it.
    assert evaluation.metrics["trivial_first_words_f1"] == 0.0
    assert evaluation.metrics["trivial_overlap_sentence_f1"] > 0.0
    assert json.loads(evaluation.artifacts[qb.ARTIFACT])["split"] == "test"
    cached = task.trivial_baselines("test")
    assert task.trivial_baselines("test") is cached and task.trivial_baselines("validation") is not cached
    expected = qb.score_baselines([ex.context for ex in task.examples["test"]],
                                  [ex.question for ex in task.examples["test"]],
                                  [ex.answers for ex in task.examples["test"]], cached.k)
    assert cached.scores == expected.scores


def squad_rows(n: int) -> list[dict]:
    path = SHARED_DATA / "squad_v1" / "validation.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"real SQuAD dev not found: {path} (needs the shared/ folder next to the repository)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in islice(fh, n)]


def test_on_real_squad_the_overlap_baselines_beat_the_position_baseline():
    rows = squad_rows(1000)
    train, scored = rows[:600], rows[600:]  # a few hundred questions; no training involved
    k = qb.answer_words([r["answers"]["text"] for r in train])
    result = qb.score_baselines([r["context"] for r in scored], [r["question"] for r in scored],
                                [r["answers"]["text"] for r in scored], k)
    f1 = {name: s["f1"] for name, s in result.scores.items()}
    assert f1["first_words"] < f1["overlap_sentence"] < 100.0, f1
    assert f1["first_words"] < f1["overlap_window"] < 100.0, f1
    # Whole sentences are rarely an exact answer; a k-word window sometimes is.
    assert result.scores["overlap_sentence"]["exact_match"] < result.scores["overlap_window"]["exact_match"], result.scores


def test_training_curves_leave_the_flat_trivial_lines_out():
    from attnbench.run.pictures import training_curves_figure

    history = {"train/loss": [(0, 2.0), (1, 1.0)], "val/f1": [(1, 10.0), (2, 30.0)],
               "val/" + trivial_metric("overlap_sentence", "f1"): [(1, 21.5), (2, 21.5)]}
    _, ax_val = training_curves_figure(history).axes
    assert [line.get_label() for line in ax_val.get_lines()] == ["val/f1"]
