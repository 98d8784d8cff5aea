"""Tests for deterministic prompt-grouped splitting and leakage checks."""
from __future__ import annotations

import random

import pytest

from tunesmith.data.example import Example
from tunesmith.data.split import leakage, split_examples
from tunesmith.errors import TunesmithError


def chat(prompt: str, answer: str = "ok", line: int = 0) -> Example:
    return Example(messages=[{"role": "user", "content": prompt},
                             {"role": "assistant", "content": answer}], line=line)


def lines(splits: dict[str, list[Example]]) -> dict[str, list[int]]:
    return {name: [ex.line for ex in exs] for name, exs in splits.items()}


EXAMPLES = [chat(f"question {i}", line=i) for i in range(200)]


def test_all_examples_assigned_once_and_roughly_proportional():
    splits = split_examples(EXAMPLES, validation=0.1, test=0.2, seed=0)
    assert set(splits) == {"train", "validation", "test"}
    all_lines = sorted(ln for group in lines(splits).values() for ln in group)
    assert all_lines == list(range(200))
    assert 5 <= len(splits["validation"]) <= 40
    assert 20 <= len(splits["test"]) <= 65


def test_deterministic_and_seed_dependent():
    a = lines(split_examples(EXAMPLES, 0.1, 0.1, seed=42))
    assert a == lines(split_examples(EXAMPLES, 0.1, 0.1, seed=42))
    assert a != lines(split_examples(EXAMPLES, 0.1, 0.1, seed=43))


def test_order_independent_and_order_preserving():
    shuffled = EXAMPLES[:]
    random.Random(5).shuffle(shuffled)
    original = split_examples(EXAMPLES, 0.15, 0.15, seed=1)
    reshuffled = split_examples(shuffled, 0.15, 0.15, seed=1)
    for name in ("train", "validation", "test"):
        assert sorted(ex.line for ex in reshuffled[name]) == [ex.line for ex in original[name]]
        # Within each split the input order is kept.
        positions = [shuffled.index(ex) for ex in reshuffled[name]]
        assert positions == sorted(positions)


def test_same_prompt_same_split_no_leakage():
    examples = []
    for i in range(60):
        examples.append(chat(f"Prompt {i}", "answer A", line=2 * i))
        examples.append(chat(f"  prompt   {i} ", "answer B", line=2 * i + 1))  # same after normalising
    splits = split_examples(examples, 0.2, 0.2, seed=9)
    for name, group in splits.items():
        assert len(group) % 2 == 0, name
    heldout = splits["validation"] + splits["test"]
    assert heldout
    assert leakage(splits["train"], heldout) == []


@pytest.mark.parametrize("seed", range(20))
def test_small_inputs_non_empty_guarantees(seed):
    three = [chat("a"), chat("b"), chat("c")]
    splits = split_examples(three, validation=0.05, test=0.05, seed=seed)
    assert [len(splits[n]) for n in ("train", "validation", "test")] == [1, 1, 1]

    no_val = split_examples(three, validation=0.0, test=0.05, seed=seed)
    assert len(no_val["test"]) == 1 and len(no_val["train"]) == 2 and no_val["validation"] == []

    big_heldout = split_examples(three, validation=0.45, test=0.5, seed=seed)
    assert all(len(big_heldout[n]) == 1 for n in ("train", "validation", "test"))


@pytest.mark.parametrize("seed", range(20))
def test_train_never_empty(seed):
    one = split_examples([chat("only")], validation=0.4, test=0.5, seed=seed)
    assert len(one["train"]) == 1
    two = split_examples([chat("x"), chat("y")], validation=0.45, test=0.5, seed=seed)
    assert len(two["train"]) >= 1
    dup = split_examples([chat("same"), chat("SAME"), chat("same ")], 0.3, 0.3, seed=seed)
    assert len(dup["train"]) == 3


def test_no_heldout_requested():
    splits = split_examples(EXAMPLES[:10], validation=0.0, test=0.0, seed=0)
    assert len(splits["train"]) == 10 and splits["validation"] == [] and splits["test"] == []
    assert split_examples([], 0.1, 0.1, seed=0) == {"train": [], "validation": [], "test": []}


def test_text_examples_split_by_text():
    texts = [Example(text=f"doc {i}", line=i) for i in range(30)]
    splits = split_examples(texts, 0.2, 0.2, seed=0)
    assert sum(len(v) for v in splits.values()) == 30


@pytest.mark.parametrize("validation,test", [(-0.1, 0.1), (0.1, 1.0), (0.6, 0.5)])
def test_invalid_fractions(validation, test):
    with pytest.raises(TunesmithError):
        split_examples(EXAMPLES, validation, test, seed=0)


def test_leakage_normalised_prompt_only():
    train = [chat("What is 2+2?", "4"), Example(text="Some  Document")]
    heldout = [chat("what is  2+2? ", "four"), chat("What is 3+3?", "6"),
               Example(text="some document"), chat("What is 2+2?\nextra")]
    leaked = leakage(train, heldout)
    assert leaked == [heldout[0], heldout[2]]


def test_keys_group_examples_with_different_prompts():
    examples = [chat(f"question {i}", line=i) for i in range(100)]
    keys = [f"group {i // 4}" for i in range(100)]          # 25 groups of 4 different prompts
    splits = split_examples(examples, 0.2, 0.2, seed=3, keys=keys)
    where = {ex.line: name for name, group in splits.items() for ex in group}
    for g in range(25):
        assert len({where[i] for i in range(4 * g, 4 * g + 4)}) == 1
    assert all(splits[name] for name in ("train", "validation", "test"))
    with pytest.raises(ValueError):
        split_examples(examples, 0.2, 0.2, seed=3, keys=keys[:-1])


def test_a_capped_sample_is_seeded_in_order_and_whole_when_not_capped():
    from tunesmith.data.split import sample_in_order, sample_indices
    assert sample_indices(5, None, 0) == sample_indices(5, 9, 0) == [0, 1, 2, 3, 4]
    picked = sample_indices(100, 10, 3)
    assert len(set(picked)) == 10 and picked == sorted(picked) and picked == sample_indices(100, 10, 3)
    assert picked != list(range(10)) and max(picked) > 50      # spread over the items, not their head
    assert sample_in_order(list("abcdefghij"), 3, 1) == [list("abcdefghij")[i] for i in sample_indices(10, 3, 1)]
