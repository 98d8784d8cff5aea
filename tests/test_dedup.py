"""Tests for exact and MinHash near-duplicate detection."""
from __future__ import annotations

import random

from tunesmith.data.dedup import exact_duplicates, near_duplicates, normalize_key, shingles

BASE = ("The quick brown fox jumps over the lazy dog while the farmer watches from the old "
        "wooden porch and the sun sets behind the distant green hills of the valley")


def test_normalize_key():
    assert normalize_key("  Hello\n\tWORLD  ") == "hello world"


def test_exact_duplicates_casefold_and_whitespace():
    keys = ["Hello world", "other", "hello   WORLD", "Other\n", "new", "HELLO WORLD"]
    assert exact_duplicates(keys) == {2: 0, 3: 1, 5: 0}
    assert exact_duplicates([]) == {}


def test_shingles_short_and_long():
    assert shingles("Hi") == {b"hi"}
    assert shingles("") == {b""}
    assert shingles("abcdef", ngram=5) == {b"abcde", b"bcdef"}


def test_one_word_changed_is_near_duplicate():
    assert len(BASE.split()) == 30
    changed = BASE.replace("farmer", "shepherd")
    unrelated = ("Quarterly revenue grew by twelve percent as the company expanded into new "
                 "markets across Europe and Asia, according to the annual report released today")
    assert near_duplicates([BASE, unrelated, changed], threshold=0.8) == {2: 0}


def test_unrelated_texts_not_duplicates():
    rng = random.Random(1)
    words = [f"w{i}" for i in range(2000)]
    texts = [" ".join(rng.choice(words) for _ in range(25)) for _ in range(50)]
    assert near_duplicates(texts, threshold=0.8) == {}


def test_exact_duplicates_are_near_duplicates():
    texts = [BASE, "something else entirely here", BASE.upper(), "  " + BASE + "\n"]
    assert near_duplicates(texts) == {2: 0, 3: 0}


def test_maps_to_earliest_kept_index():
    changed_once = BASE.replace("farmer", "shepherd")
    texts = ["unrelated opening line about cooking pasta", BASE, changed_once, changed_once]
    # Index 3 is an exact copy of a near duplicate: it points at the kept original.
    assert near_duplicates(texts, threshold=0.8) == {2: 1, 3: 1}


def test_empty_and_short_texts():
    assert near_duplicates([]) == {}
    assert near_duplicates(["", "a", "", "ab", "A", "abc"]) == {2: 0, 4: 1}


def test_deterministic_for_seed():
    rng = random.Random(7)
    words = [f"tok{i}" for i in range(300)]
    texts = []
    for _ in range(200):
        if texts and rng.random() < 0.3:
            w = rng.choice(texts).split()
            w[rng.randrange(len(w))] = rng.choice(words)
            texts.append(" ".join(w))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(30)))
    first = near_duplicates(texts, threshold=0.8, seed=3)
    assert first == near_duplicates(texts, threshold=0.8, seed=3)
    assert first  # the mutated copies are found
    assert all(j < i and j not in first for i, j in first.items())
