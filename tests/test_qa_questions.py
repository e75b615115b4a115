"""The synthetic story questions (tasks.qa.story.question): every answer re-derived from the story text.

``solve`` reads a story the way a person would (sentence by sentence, independently of the
generator); it is checked first on hand-written stories, then against generated ones.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from attnbench.errors import BadInputError
from attnbench.plugins.tasks.qa import QATask
from attnbench.plugins.tasks.synthetic_qa import StoryOptions, generate

MOVE = re.compile(r"^(\w+) (?:went|moved|travelled|journeyed|walked|ran) to the (\w+)$")
PICKUP = re.compile(r"^(\w+) picked up the (\w+)$")


def sentences(context: str) -> list[str]:
    return [s.rstrip(".") for s in context.split(". ")]


def solve(question: str, context: str) -> str:
    """The answer a reader gives: the asked person's (or the object holder's) latest place, or
    the one place the asked person went to twice."""
    story = sentences(context)
    moves = [MOVE.match(s).groups() for s in story if MOVE.match(s)]
    if m := re.match(r"Which place did (\w+) visit twice\?", question):
        counts = Counter(place for who, place in moves if who == m.group(1))
        twice = [place for place, n in counts.items() if n == 2]
        assert len(twice) == 1 and max(counts.values()) == 2, (question, context)
        return twice[0]
    if m := re.match(r"Where is the (\w+)", question):
        holders = [who for who, thing in (PICKUP.match(s).groups() for s in story if PICKUP.match(s))
                   if thing == m.group(1)]
        assert len(holders) == 1, (question, context)
        person = holders[0]
    else:
        person = re.match(r"Where (?:is|did) (\w+)", question).group(1)
    return [place for who, place in moves if who == person][-1]


def test_solve_on_hand_written_stories():
    story = ("John went to the office. Mary picked up the football. Sandra went to the garden. "
             "Mary travelled to the cellar. John moved to the bathroom.")
    assert solve("Where is the football?", story) == "cellar"  # holder moved after the pickup
    assert solve("Where is John?", story) == "bathroom"
    before = "Mary ran to the attic. Fred went to the garden. Mary picked up the key. Fred moved to the attic."
    assert solve("Where is the key now?", before) == "attic"  # holder's last move came before the pickup
    twice = ("Mary went to the attic. John went to the cellar. Mary moved to the garden. "
             "John went to the cellar. Mary ran to the attic.")
    assert solve("Which place did Mary visit twice?", twice) == "attic"  # John's repeat is not asked for
    assert solve("Which place did John visit twice?", twice) == "cellar"


def answer_sentence(row: dict) -> int:
    """Index of the sentence that holds the gold span."""
    return row["context"][: row["answers"]["answer_start"][0]].count(". ")


@pytest.mark.parametrize("question", ["where_person", "where_object", "visited_twice"])
def test_generated_answers_match_the_story(question):
    options = StoryOptions(question=question, min_sentences=3, max_sentences=9, n_people=3)
    rows = generate("train", 300, seed=5, options=options)
    assert rows == generate("train", 300, seed=5, options=options)
    assert rows != generate("test", 300, seed=5, options=options)
    for row in rows:
        text, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        assert row["context"][start:start + len(text)] == text
        assert solve(row["question"], row["context"]) == text
        n = len(sentences(row["context"]))
        assert row["support_distance"] == n - 1 - answer_sentence(row)  # sentences after the answer's fact
        assert MOVE.match(sentences(row["context"])[answer_sentence(row)])  # the span sits in a move


def test_object_holder_moves_before_and_after_the_pickup():
    rows = generate("train", 200, seed=0, options=StoryOptions(question="where_object", min_sentences=2, max_sentences=8))
    order = set()
    for row in rows:
        story = sentences(row["context"])
        pickup = next(i for i, s in enumerate(story) if PICKUP.match(s) and row["question"].split()[3].rstrip("?") in s)
        order.add(answer_sentence(row) > pickup)
    assert order == {True, False}  # neither "the move after the pickup" nor "the one before" always works


def test_visited_twice_is_not_the_latest_or_first_place():
    rows = generate("train", 300, seed=0, options=StoryOptions(question="visited_twice", min_sentences=3, max_sentences=8))
    latest = first = 0
    for row in rows:
        name = row["question"].split()[3]
        places = [place for who, place in (MOVE.match(s).groups() for s in sentences(row["context"]) if MOVE.match(s))
                  if who == name]
        assert len(places) >= 3  # the repeated place and at least one other
        latest += places[-1] == row["answers"]["text"][0]
        first += places[0] == row["answers"]["text"][0]
    assert 0.4 < latest / len(rows) < 0.8 and 0.4 < first / len(rows) < 0.8


def test_question_default_is_unchanged():
    assert StoryOptions().question == "where_person"
    row = generate("train", 1, seed=0, options=StoryOptions())[0]
    assert row["question"].startswith("Where ") and "the" not in row["question"].split()


@pytest.mark.parametrize("story, words", [
    ({"question": "visited_twice", "min_sentences": 2}, ["tasks.qa.story", "visited_twice", "min_sentences >= 3"]),
    ({"question": "where_object", "min_sentences": 1}, ["tasks.qa.story", "where_object", "min_sentences >= 2"]),
    ({"question": "who_knows"}, ["tasks.qa.story.question", "where_person", "visited_twice"]),
])
def test_bad_question_options_are_clear_errors(tmp_path, story, words):
    with pytest.raises(BadInputError) as err:
        QATask(QATask.parse_options({"story": story}, "tasks.qa"), cache_dir=tmp_path)
    for word in words:
        assert word in str(err.value)


def test_trivial_baselines_and_distances_on_visited_twice(tmp_path):
    raw = {"data": {"n_train": 120, "n_validation": 30, "n_test": 30}, "tokenizer": {"vocab_size": 300},
           "story": {"question": "visited_twice", "min_sentences": 3, "max_sentences": 8}}
    task = QATask(QATask.parse_options(raw, "tasks.qa"), cache_dir=tmp_path)
    task.prepare()
    assert all(w.start is not None for w in task.windows["train"])  # every gold span is located
    scores = json.loads(task.trivial_baselines("test").artifact("test"))
    assert scores["k_answer_words"] == 1  # a place is one word
    assert 0 < scores["baselines"]["overlap_sentence"]["f1"] < 100  # the sentence naming the person holds a place
    assert all("support_distance" in ex.extra for ex in task.examples["test"])
