"""Contamination check: held-out items whose text nearly duplicates a training item (MinHash LSH)."""
from __future__ import annotations

from ..data.dedup import normalize_key, shingles
from ..data.example import Example


def _text(ex: Example) -> str:
    return ex.text if ex.text and ex.messages else ex.prompt_key()


def check(train: list[Example], test: list[Example], threshold: float = 0.8, *, num_perm: int = 128,
          listed: int = 20) -> dict:
    """Which test items have a training item with estimated Jaccard similarity >= ``threshold``.

    Similarity is over character 5-gram shingles of the normalised input (the raw text of labelled
    data, the prompt of chat data); exact matches after normalisation always count.
    """
    from datasketch import MinHash, MinHashLSH
    exact = {}
    for j, ex in enumerate(train):
        exact.setdefault(normalize_key(_text(ex)), j)
    train_sigs = MinHash.bulk((shingles(_text(ex)) for ex in train), num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for j, sig in enumerate(train_sigs):
        lsh.insert(j, sig)
    test_sigs = MinHash.bulk((shingles(_text(ex)) for ex in test), num_perm=num_perm)
    items = []
    for i, (ex, sig) in enumerate(zip(test, test_sigs)):
        j = exact.get(normalize_key(_text(ex)))
        score = 1.0 if j is not None else 0.0
        if j is None:
            scored = [(sig.jaccard(train_sigs[c]), c) for c in lsh.query(sig)]
            scored = [s for s in scored if s[0] >= threshold]
            if scored:
                score, j = max(scored)
        if j is not None:
            items.append({"test_index": i, "test_line": ex.line, "train_line": train[j].line,
                          "similarity": round(float(score), 3), "test_text": _text(ex)[:300],
                          "train_text": _text(train[j])[:300]})
    items.sort(key=lambda d: -d["similarity"])
    return {"threshold": threshold, "test_items": len(test), "train_items": len(train),
            "contaminated": len(items), "fraction": len(items) / len(test) if test else 0.0,
            "indices": sorted(d["test_index"] for d in items), "items": items[:listed]}
