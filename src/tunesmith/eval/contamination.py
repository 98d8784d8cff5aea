"""Contamination check: held-out items whose prompt nearly duplicates a training item's (MinHash LSH).

Prompts are compared on their varying content (``data.dedup.cross_matches``): lines shared by many
examples, such as one system prompt or the labelled-format template, are left out, so they cannot
make every test item look like a training item.
"""
from __future__ import annotations

from ..data.dedup import cross_matches
from ..data.example import Example


def _shown(ex: Example) -> str:
    """The input as a reader knows it: the raw text of labelled/plain data, the user turns of a chat."""
    if ex.text and (ex.label is not None or not ex.messages):
        return ex.text
    users = [m["content"] for m in ex.prompt_messages if m["role"] == "user"]
    return "\n".join(users) if users else ex.prompt_key()


def check(train: list[Example], test: list[Example], threshold: float = 0.8, *, num_perm: int = 128,
          listed: int = 20, shared_share: float = 0.3) -> dict:
    """Which test items have a training item with estimated Jaccard similarity >= ``threshold``.

    Similarity is over character 5-gram shingles of the normalised input (the raw text of labelled
    data, the prompt of chat data) without the lines shared by more than ``shared_share`` of all
    the examples; exact matches after normalisation always count. ``same_answer`` says whether the
    matched training item also has the same answer; the summary counts those (the items whose answer
    training could have shown), as a near-identical prompt with another answer leaks no answer.
    """
    matches = cross_matches(train, test, threshold, near=True, shared_share=shared_share, num_perm=num_perm)
    items = [{"test_index": m["index"], "test_line": test[m["index"]].line, "train_line": train[m["ref"]].line,
              "similarity": m["similarity"], "same_answer": m["same_answer"],
              "test_text": _shown(test[m["index"]])[:300], "train_text": _shown(train[m["ref"]])[:300]}
             for m in matches]
    items.sort(key=lambda d: -d["similarity"])
    return {"threshold": threshold, "test_items": len(test), "train_items": len(train),
            "contaminated": len(items), "fraction": len(items) / len(test) if test else 0.0,
            "same_answer": sum(d["same_answer"] for d in items),
            "indices": sorted(d["test_index"] for d in items), "items": items[:listed]}
