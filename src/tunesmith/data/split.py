"""Deterministic, leakage-free train/validation/test splitting by prompt, and seeded samples for caps on examples."""
from __future__ import annotations

import hashlib
import random

from tunesmith.data.dedup import normalize_key
from tunesmith.data.example import Example
from tunesmith.errors import TunesmithError

SPLITS = ("train", "validation", "test")


def _unit_hash(seed: int, key: str) -> float:
    """Map ``(seed, key)`` to a stable pseudo-random number in [0, 1)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sample_indices(count: int, n: int | None, seed: int) -> list[int]:
    """Indices of at most ``n`` of ``count`` items: a seeded random sample, in the items' order (all of them when
    ``n`` is None or not smaller). Every cap on examples (evaluated, baseline, selection) takes such a sample, never
    the head of a split, which keeps the input file's order and may be sorted (by label, date or source)."""
    if n is None or n >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), n))


def sample_in_order(items: list, n: int | None, seed: int) -> list:
    """``items`` at :func:`sample_indices`."""
    return [items[i] for i in sample_indices(len(items), n, seed)]


def split_examples(examples: list[Example], validation: float, test: float,
                   seed: int, keys: list[str] | None = None) -> dict[str, list[Example]]:
    """Split examples into ``train``, ``validation`` and ``test`` by a hash of their prompt.

    Each distinct prompt (``prompt_key()`` after casefold and whitespace collapse) gets a number
    ``u`` in [0, 1) from a hash of ``seed`` and the prompt: ``u < test`` goes to test,
    ``u < test + validation`` to validation, the rest to train. The result therefore depends only
    on the seed and the set of prompts, never on input order, and examples sharing a prompt always
    share a split. Small inputs are adjusted along the same ``u`` order: with at least 3 distinct
    prompts a requested test (and validation) split gets at least one prompt, and train always
    keeps at least one. Within each split the input order is preserved.

    ``keys`` (one per example) replaces the prompt as the grouping key, to keep larger groups
    together (prepare passes one key for every example of a group of conflicting answers).
    """
    for name, value in (("validation", validation), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise TunesmithError(f"must be a fraction in [0, 1), got {value}", field=name)
    if validation + test >= 1.0:
        raise TunesmithError(f"validation + test must be below 1, got {validation + test:g}",
                             field="validation")

    if keys is None:
        keys = [normalize_key(ex.prompt_key()) for ex in examples]
    elif len(keys) != len(examples):
        raise ValueError(f"got {len(keys)} keys for {len(examples)} examples")
    ranked = sorted({key: _unit_hash(seed, key) for key in keys}.items(),
                    key=lambda item: (item[1], item[0]))
    n = len(ranked)
    # Natural cut points along the u order: [0, n_test) test, [n_test, n_held) validation.
    n_test = sum(1 for _, u in ranked if u < test)
    n_held = sum(1 for _, u in ranked if u < test + validation)
    if n >= 3:
        if test > 0:
            n_test = max(n_test, 1)
        n_held = max(n_held, n_test + (1 if validation > 0 else 0))
    if n >= 1 and n_held >= n:
        n_held = n - 1
        n_test = min(n_test, n_held - (1 if validation > 0 and n >= 3 else 0))

    assignment: dict[str, str] = {}
    for rank, (key, _) in enumerate(ranked):
        assignment[key] = "test" if rank < n_test else "validation" if rank < n_held else "train"
    result: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for ex, key in zip(examples, keys):
        result[assignment[key]].append(ex)
    return result


def leakage(train: list[Example], heldout: list[Example]) -> list[Example]:
    """Held-out examples whose normalised prompt also occurs in ``train``."""
    seen = {normalize_key(ex.prompt_key()) for ex in train}
    return [ex for ex in heldout if normalize_key(ex.prompt_key()) in seen]
