"""Tests for generation metrics against hand-computed values."""
from __future__ import annotations

import pytest

from tunesmith.eval.metrics import (bleu, compute, details, exact_match, label_metrics, normalize,
                                    parse_label, per_example_correct, rouge)

LABELS = ["negative", "positive"]


@pytest.mark.parametrize("text, expected", [
    ("Positive.", "positive"),
    ("  NEGATIVE  ", "negative"),
    ("The sentiment is negative", "negative"),
    ("I think it is not clear", None),
    ("", None),
    ("negatively speaking", None),          # whole words only
    ("positive, although partly negative", "positive"),  # first to appear wins
    ("Answer: negative. Not positive.", "negative"),
])
def test_parse_label(text, expected):
    assert parse_label(text, LABELS) == expected


def test_parse_label_multiword_and_exact_first():
    labels = ["positive", "very positive"]
    assert parse_label("Very positive!", labels) == "very positive"
    assert parse_label("it is very positive indeed", labels) == "very positive"
    assert parse_label("positive", labels) == "positive"


def test_normalize_and_exact_match():
    assert normalize("  New \n  York!!  ") == "new york"
    assert normalize("Straße.") == "strasse"
    preds = ["  Paris. ", "New   York!", "Paris", "The answer is 4"]
    refs = ["paris", "new york", "Lyon", "4"]
    assert exact_match(preds, refs) == pytest.approx(0.5)
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


# refs:    pos       pos                          neg         neg                        pos
# parsed:  pos       neg                          neg         (none)                     pos
PREDS = ["Positive.", "The sentiment is negative", "negative", "I think it is not clear", "positive"]
REFS = ["positive", "positive", "negative", "negative", "positive"]


def test_label_metrics_hand_computed():
    m = label_metrics(PREDS, REFS, LABELS)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # positive: P = 2/2, R = 2/3, F1 = 0.8;  negative: P = 1/2, R = 1/2, F1 = 0.5
    assert m["per_label"]["positive"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_label"]["negative"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["macro_precision"] == pytest.approx(0.75)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert m["macro_f1"] == pytest.approx(0.65)
    assert m["unparsed"] == 1
    assert m["labels"] == LABELS
    # rows: reference negative, positive; columns: negative, positive, unparsed
    assert m["confusion"] == [[1, 0, 1], [1, 2, 0]]


def test_label_metrics_unknown_reference():
    with pytest.raises(ValueError, match="not one of the labels"):
        label_metrics(["positive"], ["mixed"], LABELS)


def test_rouge_identical_is_100_and_disjoint_is_0():
    text = ["the cat sat on the mat", "a quick brown fox jumps"]
    assert rouge(text, text) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    assert rouge(["alpha beta"], ["gamma delta"]) == pytest.approx(
        {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})


def test_rouge_partial_overlap():
    # unigrams: 3 shared of 4 and 4 -> F1 0.75 (stemming makes "sitting"/"sits" both "sit")
    r = rouge(["the cat sits down"], ["the cat sitting there"])
    assert r["rouge1"] == pytest.approx(75.0)


def test_bleu():
    text = ["the cat sat on the mat today", "a quick brown fox jumps over the dog"]
    assert bleu(text, text) == pytest.approx(100.0)
    assert bleu(["completely unrelated words here"], ["the cat sat on the mat"]) < 10.0
    assert bleu([], []) == 0.0


def test_compute_flattens_requested_metrics():
    out = compute(["accuracy"], PREDS, REFS, LABELS)
    assert set(out) == {"accuracy", "macro_precision", "macro_recall", "macro_f1"}
    assert out["accuracy"] == pytest.approx(0.6)

    text = ["the cat sat on the mat today"]
    out = compute(["exact_match", "rouge", "bleu"], text, text, None)
    assert set(out) == {"exact_match", "rouge1", "rouge2", "rougeL", "bleu"}
    assert out["exact_match"] == 1.0 and out["bleu"] == pytest.approx(100.0)

    with pytest.raises(ValueError, match="labels"):
        compute(["accuracy"], PREDS, REFS, None)
    with pytest.raises(ValueError, match="unknown metric"):
        compute(["meteor"], PREDS, REFS, None)


def test_details():
    assert details(PREDS, REFS, None) is None
    assert details(PREDS, REFS, LABELS)["confusion"] == [[1, 0, 1], [1, 2, 0]]


def test_per_example_correct():
    assert per_example_correct("accuracy", "The sentiment is positive.", "positive", LABELS)
    assert not per_example_correct("accuracy", "not clear", "positive", LABELS)
    assert not per_example_correct("accuracy", "negative", "positive", LABELS)
    assert per_example_correct("exact_match", " Paris. ", "paris")
    assert not per_example_correct("rouge", "Paris is the capital", "Paris")
