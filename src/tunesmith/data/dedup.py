"""Exact and MinHash-based near-duplicate detection; comparing examples on their varying content."""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .example import Example

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


# ---- comparing what distinguishes examples ----------------------------------------------------
#
# Many real data sets share long text across examples: one system prompt, a fixed instruction, the
# labelled-format template. Shingled together with the varying text, that shared text makes every
# pair of examples look alike. The functions below compare examples on their *varying* content:
# lines found in many examples are left out of the similarity (and replaced by a short marker in
# the text that decides exact equality, so examples with different shared text are not equal),
# and the prompt and the answer are compared separately. Prompt text shared *within* a line (a
# question template around a varying name) is caught by a second condition: two prompts are alike
# only when their whole similarity text matches at the threshold *and* the shingles found in few
# prompts (the varying part) still overlap by at least VARYING_MIN.

SHARED_MIN_COUNT = 3        # a line must occur in at least this many examples to count as shared
MARKER = "§"
VARYING_MIN = 0.5           # least Jaccard similarity of the varying shingles of two alike prompts


@dataclass
class Compared:
    """The text each example is compared on, and the lines left out as shared."""

    prompts: list[str]          # identity: varying lines, each run of shared lines as one marker
    answers: list[str]
    prompt_sims: list[str]      # similarity: varying lines only (the identity text when none vary), framed
    answer_sims: list[str]
    shared: dict[str, int] = field(default_factory=dict)   # normalised shared line -> examples containing it

    def shared_summary(self, examples: int = 3, width: int = 80) -> dict:
        """How many shared lines were left out, how much text they held, and the most common ones."""
        top = sorted(self.shared.items(), key=lambda kv: (-kv[1], kv[0]))
        return {"lines": len(self.shared), "chars": sum(len(line) for line in self.shared),
                "examples": [line[:width] for line, _ in top[:examples]]}


def example_parts(ex: Example) -> tuple[list[str], list[str]]:
    """The prompt parts and the answer parts of an example, as compared for duplicates.

    Labelled examples are compared on their raw text (not the prompt built from the template);
    chats on the messages before the last assistant turn; text examples on their text (with no
    answer). The answer is the last assistant turn, plus the rejected reply of preference data.
    """
    if ex.label is not None and ex.text is not None:
        return [ex.text], [ex.label]
    if not ex.messages:
        return [ex.text or ""], []
    answers = [ex.reference or ""] + ([ex.rejected] if ex.rejected is not None else [])
    return [m["content"] for m in ex.prompt_messages], answers


def _lines(part: str) -> list[str]:
    return [n for n in (normalize_key(line) for line in part.splitlines()) if n]


def _marked(part: str, shared: dict[str, int]) -> str:
    """The part with every run of shared lines collapsed into one short marker (a hash of the run)."""
    out: list[str] = []
    run: list[str] = []
    for line in _lines(part) + [None]:
        if line is not None and line in shared:
            run.append(line)
            continue
        if run:
            out.append(MARKER + hashlib.blake2b("\n".join(run).encode("utf-8"), digest_size=3).hexdigest())
            run = []
        if line is not None:
            out.append(line)
    return "\n".join(out)


def _similarity_text(parts: list[str], marked: str, shared: dict[str, int]) -> str:
    """The varying lines (or, when every line is shared, the marked text), framed by start and end
    characters so that a change at either end of a short text weighs like one in the middle."""
    varying = [line for part in parts for line in _lines(part) if line not in shared]
    return "\x02" + ("\n".join(varying) if varying else marked) + "\x03"


def shared_lines(examples: list[Example], shared_share: float = 0.3, *,
                 min_count: int = SHARED_MIN_COUNT) -> dict[str, int]:
    """Normalised lines found in more than ``shared_share`` of the examples (and in at least
    ``min_count`` of them), each with the number of examples containing it."""
    df: Counter[str] = Counter()
    for prompt, answer in map(example_parts, examples):
        df.update({line for part in prompt + answer for line in _lines(part)})
    need = max(min_count, math.floor(shared_share * len(examples)) + 1)
    return {line: n for line, n in df.items() if n >= need}


def comparison_texts(examples: list[Example], shared_share: float = 0.3, *,
                     shared: dict[str, int] | None = None) -> Compared:
    """Prompt and answer text of each example, for identity and for similarity (see above).

    Shared lines (:func:`shared_lines` of ``examples``, unless ``shared`` gives them, e.g. found
    over a larger set) do not count towards similarity, so a long system prompt weighs nothing,
    while two examples that differ only in their shared text are still not equal: each run of
    shared lines is a marker (a hash of the run) in the identity text.
    """
    parts = [example_parts(ex) for ex in examples]
    if shared is None:
        shared = shared_lines(examples, shared_share)
    prompts = ["\n".join(_marked(p, shared) for p in prompt) for prompt, _ in parts]
    answers = ["\n".join(_marked(a, shared) for a in answer) for _, answer in parts]
    return Compared(prompts=prompts, answers=answers,
                    prompt_sims=[_similarity_text(p, m, shared) for (p, _), m in zip(parts, prompts)],
                    answer_sims=[_similarity_text(a, m, shared) for (_, a), m in zip(parts, answers)],
                    shared=shared)


def varying_shingles(sets: list[set], shared_share: float = 0.3, *, min_count: int = SHARED_MIN_COUNT) -> list[set]:
    """The shingle sets without the shingles found in more than ``shared_share`` of them (and in at least
    ``min_count``): what is left of a template that varies within one line ("what does the function `X`
    do?") is its varying part. A set left empty keeps all its shingles (its text is all template)."""
    df: Counter[bytes] = Counter()
    for one in sets:
        df.update(one)
    need = max(min_count, math.floor(shared_share * len(sets)) + 1)
    common = {sh for sh, n in df.items() if n >= need}
    return [(one - common) or one for one in sets] if common else sets


class PromptSimilarity:
    """Similarity of prompts by their shingle sets, with the varying-part condition (see above):
    ``score(i, j)`` is the whole-text Jaccard when the varying shingles overlap by ``VARYING_MIN``, else 0."""

    def __init__(self, texts: list[str], keys: list[str], shared_share: float, ngram: int):
        self.sets = [shingles(t, ngram) for t in texts]
        self.varying = varying_shingles(self.sets, shared_share)
        self.keys = keys

    def score(self, i: int, j: int) -> float:
        if self.keys[i] == self.keys[j]:
            return 1.0
        if _jaccard(self.varying[i], self.varying[j]) < VARYING_MIN:
            return 0.0
        return _jaccard(self.sets[i], self.sets[j])


def _candidate_threshold(threshold: float) -> float:
    """The LSH proposes pairs from well below ``threshold`` (the exact Jaccard then decides): at the
    threshold itself an LSH tuned to it misses about half of the true pairs."""
    return max(0.05, threshold - 0.2)


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class Duplicates:
    """Exact and near duplicates and answer conflicts among examples (indices into the input).

    ``exact`` and ``near`` map each later duplicate to the earliest kept example it repeats (same
    prompt and same answer, after normalisation / at the similarity threshold). ``conflicts`` lists
    ``(earlier, later)`` pairs whose prompts match but whose answers differ; neither is a duplicate.
    """

    exact: dict[int, int]
    near: dict[int, int]
    conflicts: list[tuple[int, int]]
    similarity: dict[tuple[int, int], float]      # prompt similarity of each near / conflict pair
    compared: Compared

    def groups(self) -> list[list[int]]:
        """Connected groups of conflicting examples (each sorted; groups in order of first member)."""
        parent: dict[int, int] = {}

        def root(i: int) -> int:
            while parent.setdefault(i, i) != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i
        for a, b in self.conflicts:
            parent[root(b)] = root(a)
        out: dict[int, list[int]] = {}
        for i in sorted(parent):
            out.setdefault(root(i), []).append(i)
        return sorted(out.values())


def find_duplicates(examples: list[Example], threshold: float = 0.85, *, near: bool = True,
                    shared_share: float = 0.3, shared: dict[str, int] | None = None, num_perm: int = 128,
                    seed: int = 0, ngram: int = 5) -> Duplicates:
    """Exact duplicates, near duplicates and conflicts, judged on varying content (see above).

    Two examples are duplicates when both their prompts and their answers match (exactly after
    normalisation, or with Jaccard similarity >= ``threshold`` of their shingles when ``near``);
    prompts that match with answers that do not are a conflict. Without ``near`` only exactly
    equal prompts are compared. Candidates come from a MinHash LSH index over the prompts; the
    exact Jaccard similarity of the candidate's shingle sets decides.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    cmp = comparison_texts(examples, shared_share, shared=shared)
    pkeys = [normalize_key(p) for p in cmp.prompts]
    akeys = [normalize_key(a) for a in cmp.answers]
    first: dict[tuple[str, str], int] = {}
    exact: dict[int, int] = {}
    for i, key in enumerate(zip(pkeys, akeys)):
        if key in first:
            exact[i] = first[key]
        else:
            first[key] = i
    unique = [i for i in range(len(examples)) if i not in exact]
    answer_sets: dict[int, set] = {}

    def answer_sim(i: int, j: int) -> float:
        if akeys[i] == akeys[j]:
            return 1.0
        for k in (i, j):
            if k not in answer_sets:
                answer_sets[k] = shingles(cmp.answer_sims[k], ngram)
        return _jaccard(answer_sets[i], answer_sets[j])

    def candidates():
        if near:
            from datasketch import MinHash, MinHashLSH  # deferred: importing datasketch is slow
            sim = PromptSimilarity(cmp.prompt_sims, pkeys, shared_share, ngram)
            sigs = MinHash.bulk((sim.sets[i] for i in unique), num_perm=num_perm, seed=seed)
            lsh = MinHashLSH(threshold=_candidate_threshold(threshold), num_perm=num_perm)
            for i, sig in zip(unique, sigs):
                # LSH proposes, the exact Jaccard of the shingle sets decides (no estimation noise)
                found = {j: sim.score(i, j) for j in lsh.query(sig)}
                yield i, {j: s for j, s in found.items() if s >= threshold}
                lsh.insert(i, sig)
        else:
            by_prompt: dict[str, list[int]] = {}
            for i in unique:
                yield i, {j: 1.0 for j in by_prompt.get(pkeys[i], [])}
                by_prompt.setdefault(pkeys[i], []).append(i)

    near_map: dict[int, int] = {}
    conflicts: list[tuple[int, int]] = []
    similarity: dict[tuple[int, int], float] = {}
    for i, found in candidates():
        if not found:
            continue
        same = sorted(j for j in found if j not in near_map and answer_sim(i, j) >= threshold)
        if near and same:
            near_map[i] = same[0]
            similarity[(same[0], i)] = round(found[same[0]], 3)
            continue
        differing = sorted(j for j in found if j not in near_map and answer_sim(i, j) < threshold)
        if differing:
            conflicts.append((differing[0], i))
            similarity[(differing[0], i)] = round(found[differing[0]], 3)
    for i, j in exact.items():             # an exact copy of a near duplicate points at the kept original
        exact[i] = near_map.get(j, j)
    return Duplicates(exact=exact, near=dict(sorted(near_map.items())), conflicts=conflicts,
                      similarity=similarity, compared=cmp)


def cross_matches(reference: list[Example], queries: list[Example], threshold: float = 0.85, *,
                  near: bool = True, shared_share: float = 0.3, shared: dict[str, int] | None = None,
                  num_perm: int = 128, seed: int = 0, ngram: int = 5) -> list[dict]:
    """Query examples whose prompt matches a reference example's prompt, on varying content.

    Shared lines are found over both lists together (unless ``shared`` gives them). Returns, in query order,
    ``{"index", "ref", "similarity", "same_answer", "query_text", "ref_text"}`` for each query
    with an exactly equal prompt (similarity 1.0) or, with ``near``, the most similar reference
    prompt at Jaccard similarity >= ``threshold`` (candidates from MinHash LSH, then exact).
    """
    cmp = comparison_texts(reference + queries, shared_share, shared=shared)
    n = len(reference)
    pkeys = [normalize_key(p) for p in cmp.prompts]
    akeys = [normalize_key(a) for a in cmp.answers]
    exact: dict[str, int] = {}
    for j in range(n):
        exact.setdefault(pkeys[j], j)
    lsh = sigs = None
    if near and reference and queries:
        from datasketch import MinHash, MinHashLSH
        sim = PromptSimilarity(cmp.prompt_sims, pkeys, shared_share, ngram)
        sigs = MinHash.bulk(sim.sets, num_perm=num_perm, seed=seed)
        lsh = MinHashLSH(threshold=_candidate_threshold(threshold), num_perm=num_perm)
        for j in range(n):
            lsh.insert(j, sigs[j])
    out = []
    for q in range(len(queries)):
        i = n + q
        j, score = exact.get(pkeys[i]), 1.0
        if j is None and lsh is not None:
            scored = [(sim.score(i, c), -c) for c in lsh.query(sigs[i])]
            scored = [s for s in scored if s[0] >= threshold]
            if scored:
                score, neg = max(scored)
                j = -neg
        if j is not None:
            out.append({"index": q, "ref": j, "similarity": round(score, 3),
                        "same_answer": akeys[i] == akeys[j], "query_text": cmp.prompts[i],
                        "ref_text": cmp.prompts[j]})
    return out
