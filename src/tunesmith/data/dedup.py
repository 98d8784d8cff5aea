"""Exact and MinHash-based near-duplicate detection over example texts."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasketch import MinHash


def normalize_key(text: str) -> str:
    """Casefold and collapse all whitespace runs to one space (the comparison key for duplicates)."""
    return " ".join(text.casefold().split())


def exact_duplicates(keys: list[str]) -> dict[int, int]:
    """Map the index of each later duplicate to the index of its first occurrence.

    Keys are compared after :func:`normalize_key`, so case and whitespace differences are ignored.
    """
    first: dict[str, int] = {}
    duplicates: dict[int, int] = {}
    for i, key in enumerate(keys):
        norm = normalize_key(key)
        if norm in first:
            duplicates[i] = first[norm]
        else:
            first[norm] = i
    return duplicates


def shingles(text: str, ngram: int = 5) -> set[bytes]:
    """Character ``ngram``-grams of the normalised text; texts shorter than ``ngram`` are one shingle."""
    norm = normalize_key(text)
    if len(norm) <= ngram:
        return {norm.encode("utf-8")}
    return {norm[i:i + ngram].encode("utf-8") for i in range(len(norm) - ngram + 1)}


def near_duplicates(texts: list[str], threshold: float = 0.85, num_perm: int = 128,
                    seed: int = 0, ngram: int = 5) -> dict[int, int]:
    """Map each later near-duplicate index to the earliest kept index it matches.

    Texts are shingled into character ``ngram``-grams of their normalised form and hashed with
    MinHash; an LSH index proposes candidates among the texts kept so far (in input order), and a
    candidate counts only if its estimated Jaccard similarity is at least ``threshold``. Exact
    duplicates (after normalisation) are always reported. Duplicates are never inserted, so every
    value in the result is a kept index.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    from datasketch import MinHash, MinHashLSH  # deferred: importing datasketch is slow

    duplicates = exact_duplicates(texts)
    unique = [i for i in range(len(texts)) if i not in duplicates]
    signatures = MinHash.bulk((shingles(texts[i], ngram) for i in unique),
                              num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: dict[int, MinHash] = {}
    replaced: dict[int, int] = {}
    for i, signature in zip(unique, signatures):
        matches = [j for j in lsh.query(signature) if signature.jaccard(kept[j]) >= threshold]
        if matches:
            replaced[i] = min(matches)
        else:
            lsh.insert(i, signature)
            kept[i] = signature
    # An exact duplicate points at its first occurrence, which may itself be a near duplicate.
    for i, first in duplicates.items():
        duplicates[i] = replaced.get(first, first)
    duplicates.update(replaced)
    return dict(sorted(duplicates.items()))
