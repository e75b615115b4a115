"""Built-in synthetic translation data: a toy language pair whose reordering grows with length.

The source language is verb-initial (like Irish or Welsh):
``verb det adj* noun det adj* noun (prep det adj* noun)*``, e.g.
"sees the old farmer a red dog near the house". The target language is verb-final (like
Turkish or Japanese) and

- maps every word through a fixed one-to-one dictionary of invented words (no word needs
  context to be translated);
- keeps every other word in order, but moves the verb from the first position to the last:
  the verb travels past the whole sentence, so the reordering distance grows with length.

What it tests: a model must carry the verb across the whole sentence while translating every
other word in order. Attention can look each source word up when it is needed (a fixed
offset, plus one lookup of the verb at the end); an encoder-decoder without attention must
squeeze the whole sentence into one vector, which breaks down as sentences get longer.
Source lengths run from 3 to about 50 whitespace tokens, spread across the default length
buckets (1-10, 11-20, 21-30, 31+).

The output is a pure function of ``(seed, split, n)``; the dictionary never changes.
"""

from __future__ import annotations

import random

DETERMINERS = ["the", "a"]
# A small lexicon on purpose: tiny models learn the dictionary within a few hundred steps,
# so what separates them is how they cope with length and reordering.
NOUNS = ["farmer", "dog", "house", "river", "teacher", "child", "garden", "horse", "bridge", "king"]
ADJECTIVES = ["old", "red", "small", "big", "quiet"]
VERBS = ["sees", "finds", "likes", "follows", "calls"]
PREPOSITIONS = ["near", "with", "behind", "under", "beside"]

SYLLABLES = ["ka", "lo", "mi", "ru", "ne", "ta", "vo", "si", "pe", "gu", "da", "ze", "fo", "bi", "ly", "wa"]


def _invent_lexicon() -> dict[str, str]:
    """A fixed source -> target dictionary of unique two- or three-syllable invented words."""
    rng = random.Random("translation-lexicon")
    lexicon, used = {}, set()
    for word in DETERMINERS + NOUNS + ADJECTIVES + VERBS + PREPOSITIONS:
        while True:
            candidate = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
            if candidate not in used:
                break
        used.add(candidate)
        lexicon[word] = candidate
    return lexicon


LEXICON = _invent_lexicon()
MAX_PREPOSITIONAL_PHRASES = 9


def _noun_phrase(rng: random.Random) -> list[str]:
    adjectives = rng.sample(ADJECTIVES, rng.choice((0, 0, 1, 1, 2)))
    return [rng.choice(DETERMINERS), *adjectives, rng.choice(NOUNS)]


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """One (source, target) pair: verb, subject, object and a random number of prepositional phrases."""
    verb = rng.choice(VERBS)
    rest = _noun_phrase(rng) + _noun_phrase(rng)
    for _ in range(rng.randint(0, MAX_PREPOSITIONAL_PHRASES)):
        rest += [rng.choice(PREPOSITIONS), *_noun_phrase(rng)]
    return " ".join([verb, *rest]), " ".join(LEXICON[w] for w in [*rest, verb])


def generate(n: int, seed: int, split: str) -> list[dict]:
    """``n`` examples ``{id, source, target}`` for ``split``, deterministic per ``seed``."""
    rng = random.Random(f"translation/{seed}/{split}")
    rows = []
    for i in range(n):
        source, target = sentence_pair(rng)
        rows.append({"id": f"{split}-{i}", "source": source, "target": target})
    return rows
