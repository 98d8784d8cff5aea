"""Forgetting is also a change in kind: general answers that became fragments or task labels are flagged."""
from __future__ import annotations

from tunesmith.eval.forgetting import behaviour, compare

PROMPTS = ["What is 12 multiplied by 7?", "Name a colour of the sky.", "Explain what a compiler does.",
           "Who wrote Hamlet?"]
BEFORE = ["12 multiplied by 7 is 84, because seven twelves make eighty-four.",
          "The sky is usually blue on a clear day, and red or orange at sunset.",
          "A compiler translates source code written by people into machine code a computer runs.",
          "Hamlet was written by William Shakespeare around the year 1600."]


def answers(texts):
    return {"perplexity": 10.0, "answers": [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, texts)]}


def test_fragments_are_behaviour_drift_even_when_perplexity_holds():
    after = ["Multiplication", "Blue sky.", BEFORE[2], "Shakespeare"]
    out = compare(answers(BEFORE), answers(after), threshold=0.1)
    assert out["perplexity_change"] == 0 and out["flagged"]
    assert out["behaviour"]["fragments"] == 3 and out["behaviour"]["drift"]
    assert any("became fragments" in r for r in out["reasons"])


def test_task_labels_as_general_answers_are_named():
    after = ["positive", "negative", "positive", BEFORE[3]]
    out = compare(answers(BEFORE), answers(after), threshold=0.1, labels=["positive", "negative"])
    assert out["behaviour"]["label_answers"] == 3
    assert any("task's labels" in r or "became fragments" in r for r in out["reasons"])


def test_rephrased_full_answers_are_not_drift():
    after = [a.replace("is", "equals", 1) for a in BEFORE]
    out = compare(answers(BEFORE), answers(after), threshold=0.1)
    assert not out["flagged"] and not out["behaviour"]["drift"] and out["behaviour"]["fragments"] == 0


def test_short_answers_before_are_not_counted_as_fragments():
    pairs = [({"prompt": "2+2?", "answer": "4"}, {"prompt": "2+2?", "answer": "Four"})] * 4
    assert behaviour(pairs)["fragments"] == 0 and not behaviour(pairs)["drift"]
