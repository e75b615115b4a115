"""Built-in synthetic sentiment data: labels that hinge on negation, contrast and distance.

Each example is a short review whose label (0 negative, 1 positive) is decided by one
*deciding clause*. The polarity word alone never tells the label: the generator makes a
model track structure around it. Constructions (the ``construction`` field):

- ``simple``: "the plot was charming ." - the adjective decides (a bag of words solves it).
- ``negation``: "the plot was not bad ." - one negation flips the adjective.
- ``double_negation``: "it is not true that the acting was not good ." - two flips cancel.
- ``contrast``: "the cast was superb , but the ending was dull ." / "although A , B" /
  "A ; however , B" - the clause after the contrast marker decides; the other clause has
  the opposite label, so counting polarity words gives nothing.
- ``long_distance``: "the script was not clever , even though the music was great , we saw
  it on a rainy tuesday and ..." - the deciding clause comes first, followed by an opposite
  concessive clause and a long neutral tail, so the evidence sits far from the end of the
  sequence. A model that summarises left to right must carry it across the tail; every model
  must tell which of the two clauses decides. (The built-in ``rnn`` baseline is bidirectional
  and mean-pools its states, so it has no such bottleneck: docs/tasks.md has the measurements.)

Labels are balanced and drawn before the sentence is built. The output is a pure function
of ``(seed, split, n)``: the same call always gives the same examples.
"""

from __future__ import annotations

import random

SUBJECTS = ["the movie", "the plot", "the acting", "the script", "the music", "the ending", "the cast", "the story"]
POSITIVE = ["good", "great", "wonderful", "brilliant", "charming", "clever"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "weak"]
VERBS = ["was", "is", "felt"]
INTENSIFIERS = ["", "", "really", "quite"]
NEGATING_FRAMES = ["it is not true that", "i would not say that", "nobody could claim that", "it is false that"]
CONTRASTS = ["{a} , but {b}", "although {a} , {b}", "{a} ; however , {b}", "{a} , yet {b}"]
FILLERS = ["we saw it on a rainy tuesday", "the theatre was half empty", "my friend bought popcorn",
           "it runs for about two hours", "the tickets were on sale", "we sat in the third row",
           "the trailer played twice before it", "my cousin had read the book", "the bus home was late",
           "the screening started at nine", "there was a long queue outside", "i went with my neighbours"]

CONSTRUCTIONS = {"simple": 0.25, "negation": 0.2, "double_negation": 0.15, "contrast": 0.25, "long_distance": 0.15}


def _clause(rng: random.Random, label: int, negated: bool) -> str:
    """A clause with sentiment ``label``; negated clauses use an adjective of the opposite polarity."""
    adjective_positive = bool(label) != negated
    words = [rng.choice(SUBJECTS), rng.choice(VERBS)]
    if negated:
        words.append("not")
    words += [rng.choice(INTENSIFIERS), rng.choice(POSITIVE if adjective_positive else NEGATIVE)]
    return " ".join(w for w in words if w)


def _sentence(rng: random.Random, construction: str, label: int) -> str:
    if construction == "simple":
        return _clause(rng, label, negated=False)
    if construction == "negation":
        return _clause(rng, label, negated=True)
    if construction == "double_negation":
        # frame flips once, "not" in the clause flips again: the adjective's polarity is the label
        return f"{rng.choice(NEGATING_FRAMES)} {_clause(rng, 1 - label, negated=True)}"
    deciding = _clause(rng, label, negated=rng.random() < 0.4)
    other = _clause(rng, 1 - label, negated=rng.random() < 0.4)
    if construction == "contrast":
        return rng.choice(CONTRASTS).format(a=other, b=deciding)
    tail = rng.sample(FILLERS, rng.randint(2, 5))
    return f"{deciding} , even though {other} , " + " and ".join(tail)


def generate(n: int, seed: int, split: str) -> list[dict]:
    """``n`` examples ``{id, sentence, label, construction}`` for ``split``, deterministic per ``seed``."""
    rng = random.Random(f"sentiment/{seed}/{split}")
    names, weights = zip(*CONSTRUCTIONS.items())
    rows = []
    for i in range(n):
        label = rng.randrange(2)
        construction = rng.choices(names, weights)[0]
        rows.append({"id": f"{split}-{i}", "sentence": _sentence(rng, construction, label) + " .",
                     "label": label, "construction": construction})
    return rows
