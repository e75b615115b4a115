"""bAbI-like stories for extractive QA whose supporting fact can sit far from the question.

A story is a list of short sentences in which a few people move between places, with
distractor sentences (people handling objects) mixed in::

    Mary went to the kitchen. John picked up the apple. Mary moved to the garden.
    Sandra travelled to the cellar. John went to the office.
    Question: Where is Mary?   Answer: garden

The answer is the place in the *last* movement sentence about the person asked for (the
supporting fact), copied as a span of the context. What it tests:

- **long-range lookup**: the supporting fact is placed uniformly at random in the story, so
  its distance to the question (at the end of the input) ranges from 0 to the whole story;
  ``support_distance`` (sentences after the fact) lets the task report scores by distance.
- **binding, not bag-of-words**: every place in the story is a plausible answer; only the
  one bound to the right name, in a movement sentence, is correct.
- **recency**: with ``stale_moves`` the person has usually moved before, so the model must
  prefer the latest fact about them, not the first.

Generation is deterministic per (seed, split); splits use disjoint random streams.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAMES = ["Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Bill", "Emma",
         "Oliver", "Nora", "Peter", "Lucy", "Omar", "Greta", "Ivan", "Zoe"]
PLACES = ["kitchen", "garden", "hallway", "bathroom", "bedroom", "office",
          "cellar", "balcony", "library", "garage", "attic", "studio"]
MOVES = ["went to", "moved to", "travelled to", "journeyed to", "walked to", "ran to"]
OBJECT_ACTIONS = ["picked up", "dropped", "looked at", "put down"]
OBJECTS = ["apple", "football", "milk", "book", "lamp", "key", "box", "umbrella"]
QUESTIONS = ["Where is {name}?", "Where is {name} now?", "Where did {name} go last?"]
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

    @model_validator(mode="after")
    def _check_range(self):
        if self.max_sentences < self.min_sentences:
            raise ValueError(f"max_sentences ({self.max_sentences}) must be >= min_sentences ({self.min_sentences})")
        if self.n_people > self.n_names:
            raise ValueError(f"n_people ({self.n_people}) must be <= n_names ({self.n_names})")
        return self


def _move(rng: random.Random, name: str, places: list[str]) -> tuple[str, str]:
    place = rng.choice(places)
    return f"{name} {rng.choice(MOVES)} the {place}.", place


def _story(rng: random.Random, options: StoryOptions) -> dict:
    n = rng.randint(options.min_sentences, options.max_sentences)
    people = rng.sample(NAMES[: options.n_names], options.n_people)
    places = PLACES[: options.n_places]
    target, others = people[0], people[1:]
    support = rng.randrange(n)  # uniform position: distances to the question vary evenly

    sentences: list[str] = []
    answer = ""
    for i in range(n):
        if i == support:
            sentence, answer = _move(rng, target, places)
            support_start = sum(len(s) + 1 for s in sentences)
            answer_start = support_start + sentence.rindex(answer)
        else:
            # After the supporting fact the target must not move again; before it, it may.
            movers = others + [target] if (i < support and options.stale_moves) else others
            who = rng.choice(movers)
            if rng.random() < options.distractor_rate:
                sentence = f"{who} {rng.choice(OBJECT_ACTIONS)} the {rng.choice(OBJECTS)}."
            else:
                sentence, _ = _move(rng, who, places)
        sentences.append(sentence)
    context = " ".join(sentences)
    assert context[answer_start:answer_start + len(answer)] == answer
    return {
        "context": context,
        "question": rng.choice(QUESTIONS).format(name=target),
        "answers": {"text": [answer], "answer_start": [answer_start]},
        "support_distance": n - 1 - support,
    }


def generate(split: str, n: int, seed: int, options: StoryOptions) -> list[dict]:
    """``n`` stories in the SQuAD v1.1 row layout (+ ``support_distance``) for ``split``."""
    rng = random.Random(f"{seed}:{SPLIT_STREAMS.get(split, split)}")
    rows = []
    for i in range(n):
        row = _story(rng, options)
        rows.append({"id": f"{split}-{i}", "title": "story", **row})
    return rows
