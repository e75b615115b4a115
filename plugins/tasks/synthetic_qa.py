"""bAbI-like stories for extractive QA whose supporting fact can sit far from the question.

A story is a list of short sentences in which a few people move between places, with
distractor sentences (people handling objects) mixed in::

    Mary went to the kitchen. John picked up the apple. Mary moved to the garden.
    Sandra travelled to the cellar. John went to the office.
    Question: Where is Mary?   Answer: garden

With ``question: where_person`` (the default) the answer is the place in the *last* movement
sentence about the person asked for (the supporting fact), copied as a span of the context.
What it tests:

- **long-range lookup**: the supporting fact is placed uniformly at random in the story, so
  its distance to the question (at the end of the input) ranges from 0 to the whole story;
  ``support_distance`` (sentences after the fact) lets the task report scores by distance.
- **binding, not bag-of-words**: every place in the story is a plausible answer; only the
  one bound to the right name, in a movement sentence, is correct.
- **recency**: with ``stale_moves`` the person has usually moved before, so the model must
  prefer the latest fact about them, not the first.

With ``question: where_object`` (bAbI's task 2, "two supporting facts") the question asks for
an object one person picked up, and the answer is that person's latest place::

    John went to the office. Mary picked up the football. Sandra went to the garden.
    Mary travelled to the cellar. John moved to the bathroom.
    Question: Where is the football?   Answer: cellar

The question names neither the holder nor the place: the model must find the pickup of the
object asked for, read the holder's name there, and then find that person's latest move,
which may come before or after the pickup. Relating the two facts goes through the name
(content), not through their positions.

With ``question: visited_twice`` the person asked for moves three or more times, to one
place twice and to other places once; the answer is the repeated place::

    Mary went to the attic. John went to the cellar. Mary moved to the garden.
    John went to the cellar. Mary ran to the attic.
    Question: Which place did Mary visit twice?   Answer: attic

Nothing about position singles the answer out (X's latest place is right only when the
repeat is the last move): the two visits are related by their place, a content match
between two tokens anywhere in the story, which a reader must check against every earlier
or later move of X.

Generation is deterministic per (seed, split); splits use disjoint random streams.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAMES = ["Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Bill", "Emma",
         "Oliver", "Nora", "Peter", "Lucy", "Omar", "Greta", "Ivan", "Zoe"]
PLACES = ["kitchen", "garden", "hallway", "bathroom", "bedroom", "office",
          "cellar", "balcony", "library", "garage", "attic", "studio"]
MOVES = ["went to", "moved to", "travelled to", "journeyed to", "walked to", "ran to"]
OBJECT_ACTIONS = ["picked up", "dropped", "looked at", "put down"]
OBJECTS = ["apple", "football", "milk", "book", "lamp", "key", "box", "umbrella"]
QUESTIONS = ["Where is {name}?", "Where is {name} now?", "Where did {name} go last?"]
OBJECT_QUESTIONS = ["Where is the {thing}?", "Where is the {thing} now?"]
SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}


class StoryOptions(BaseModel):
    """Shape of the generated stories (the ``tasks.qa.story`` section)."""

    model_config = ConfigDict(extra="forbid")
    min_sentences: int = Field(4, ge=1, description="fewest sentences in a story")
    max_sentences: int = Field(12, ge=1, description="most sentences in a story")
    n_people: int = Field(4, ge=2, le=len(NAMES), description="people per story")
    n_names: int = Field(len(NAMES), ge=2, le=len(NAMES), description="names the people are drawn from")
    n_places: int = Field(len(PLACES), ge=2, le=len(PLACES), description="places drawn from")
    distractor_rate: float = Field(0.3, ge=0.0, lt=1.0, description="share of object sentences")
    stale_moves: bool = Field(True, description="the person may have moved before the supporting fact")
    question: Literal["where_person", "where_object", "visited_twice"] = Field(
        "where_person",
        description="where_person: 'Where is X?' (X's latest place); where_object: 'Where is the football?' "
                    "(the latest place of the person who picked it up); visited_twice: 'Which place did X visit "
                    "twice?' (the one place among X's moves that repeats)")

    @model_validator(mode="after")
    def _check_range(self):
        if self.max_sentences < self.min_sentences:
            raise ValueError(f"max_sentences ({self.max_sentences}) must be >= min_sentences ({self.min_sentences})")
        if self.n_people > self.n_names:
            raise ValueError(f"n_people ({self.n_people}) must be <= n_names ({self.n_names})")
        needs = {"where_object": (2, "the pickup and the holder's move"),
                 "visited_twice": (3, "two visits of the answer and one of another place")}.get(self.question)
        if needs and self.min_sentences < needs[0]:
            raise ValueError(f"question: {self.question} needs min_sentences >= {needs[0]} ({needs[1]}), "
                             f"got {self.min_sentences}")
        return self


def _move(rng: random.Random, name: str, places: list[str]) -> tuple[str, str]:
    place = rng.choice(places)
    return f"{name} {rng.choice(MOVES)} the {place}.", place


def _story(rng: random.Random, options: StoryOptions) -> dict:
    if options.question == "where_object":
        return _object_story(rng, options)
    if options.question == "visited_twice":
        return _twice_story(rng, options)
    return _person_story(rng, options)


def _person_story(rng: random.Random, options: StoryOptions) -> dict:
    """'Where is X?': the place of X's last move."""
    n = rng.randint(options.min_sentences, options.max_sentences)
    people = rng.sample(NAMES[: options.n_names], options.n_people)
    support = rng.randrange(n)  # uniform position: distances to the question vary evenly
    sentences, answer, answer_start = _latest_move(rng, options, n, people, support, {}, OBJECTS)
    return _row(sentences, rng.choice(QUESTIONS).format(name=people[0]), answer, answer_start, n - 1 - support)


def _object_story(rng: random.Random, options: StoryOptions) -> dict:
    """'Where is the football?': the place of the last move of the person who picked it up.

    The pickup and the holder's last move sit at two distinct uniform positions, in either
    order. Nobody else touches the object asked for."""
    n = rng.randint(options.min_sentences, options.max_sentences)
    people = rng.sample(NAMES[: options.n_names], options.n_people)
    thing = rng.choice(OBJECTS)
    support, pickup = rng.sample(range(n), 2)
    fixed = {pickup: f"{people[0]} picked up the {thing}."}
    sentences, answer, answer_start = _latest_move(rng, options, n, people, support, fixed,
                                                   [o for o in OBJECTS if o != thing])
    return _row(sentences, rng.choice(OBJECT_QUESTIONS).format(thing=thing), answer, answer_start, n - 1 - support)


def _latest_move(rng: random.Random, options: StoryOptions, n: int, people: list[str], support: int,
                 fixed: dict[int, str], things: list[str]) -> tuple[list[str], str, int]:
    """``n`` sentences in which ``people[0]`` moves for the last time at ``support``; ``fixed``
    sentences go at their index, the rest are moves and object sentences (``things``) of others.
    Returns the sentences, the place of that last move and its character offset."""
    places = PLACES[: options.n_places]
    target, others = people[0], people[1:]
    sentences: list[str] = []
    answer, answer_start = "", 0
    for i in range(n):
        if i == support:
            sentence, answer = _move(rng, target, places)
            answer_start = _offset(sentences) + sentence.rindex(answer)
        elif i in fixed:
            sentence = fixed[i]
        else:
            # After the supporting fact the target must not move again; before it, it may.
            movers = others + [target] if (i < support and options.stale_moves) else others
            sentence = _filler(rng, rng.choice(movers), places, options, things)
        sentences.append(sentence)
    return sentences, answer, answer_start


def _twice_story(rng: random.Random, options: StoryOptions) -> dict:
    """'Which place did X visit twice?': X moves 3 or more times, to one place twice and to
    other places once each; the answer is the repeated place (gold span: the later visit).

    Finding it relates two of X's moves by their place (content), wherever they are."""
    n = rng.randint(options.min_sentences, options.max_sentences)
    people = rng.sample(NAMES[: options.n_names], options.n_people)
    target, others = people[0], people[1:]
    places = PLACES[: options.n_places]
    n_moves = min(rng.randint(3, max(3, (n + 1) // 2)), len(places) + 1, n)
    twice, *once = rng.sample(places, n_moves - 1)
    slots = sorted(rng.sample(range(n), n_moves))
    repeated = rng.sample(range(n_moves), 2)
    route = iter(once)
    destination = {slot: twice if k in repeated else next(route) for k, slot in enumerate(slots)}
    support = slots[max(repeated)]
    sentences: list[str] = []
    for i in range(n):
        if i in destination:
            sentence = f"{target} {rng.choice(MOVES)} the {destination[i]}."
            if i == support:
                answer_start = _offset(sentences) + sentence.rindex(twice)
        else:
            sentence = _filler(rng, rng.choice(others), places, options, OBJECTS)
        sentences.append(sentence)
    return _row(sentences, f"Which place did {target} visit twice?", twice, answer_start, n - 1 - support)


def _filler(rng: random.Random, who: str, places: list[str], options: StoryOptions, things: list[str]) -> str:
    """A sentence that does not answer the question: an object sentence or a move."""
    if rng.random() < options.distractor_rate:
        return f"{who} {rng.choice(OBJECT_ACTIONS)} the {rng.choice(things)}."
    return _move(rng, who, places)[0]


def _offset(sentences: list[str]) -> int:
    """Character offset of the next sentence in ``" ".join(sentences + [next])``."""
    return sum(len(s) + 1 for s in sentences)


def _row(sentences: list[str], question: str, answer: str, answer_start: int, support_distance: int) -> dict:
    context = " ".join(sentences)
    assert context[answer_start:answer_start + len(answer)] == answer
    return {
        "context": context,
        "question": question,
        "answers": {"text": [answer], "answer_start": [answer_start]},
        "support_distance": support_distance,
    }


def generate(split: str, n: int, seed: int, options: StoryOptions) -> list[dict]:
    """``n`` stories in the SQuAD v1.1 row layout (+ ``support_distance``) for ``split``."""
    rng = random.Random(f"{seed}:{SPLIT_STREAMS.get(split, split)}")
    rows = []
    for i in range(n):
        row = _story(rng, options)
        rows.append({"id": f"{split}-{i}", "title": "story", **row})
    return rows
