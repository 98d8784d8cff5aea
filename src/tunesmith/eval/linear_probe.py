"""Linear probe: how well a label head on the base model's own, frozen features separates a task's labels.

A classification head (``objective.name: classification``) reads the final hidden state at the last prompt
token. Fitting a logistic regression on exactly those features of a training sample, with the base model
frozen, and scoring it on held-out items measures in seconds what such a head starts from; training the head
with LoRA can only move the features towards the labels. ``advise`` sets this beside few-shot and label-safe
decoding to choose between a head and generated answers.
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np

from ..data.example import Example


def labelled(examples: Sequence[Example], labels: Sequence[str]) -> list[Example]:
    """The chat examples whose answer is one of ``labels`` (the probe's classes are the answer strings)."""
    allowed = set(labels)
    return [ex for ex in examples if ex.messages and ex.reference in allowed]


def features(model, tokenizer, examples: Sequence[Example], max_length: int, batch_size: int = 8) -> np.ndarray:
    """``(len(examples), hidden)`` float32 features: the head's input for each example's prompt, as the
    classification objective computes it (``ClassificationObjective.features``: a prompt prefix every row of a
    batch shares runs once)."""
    from ..generation import pad_token_id
    from ..objectives.classification import ClassificationObjective, ClsItem
    objective = ClassificationObjective(max_length=max_length)
    items = [ClsItem(objective.prompt_ids(tokenizer, ex.prompt_messages)[0], 0) for ex in examples]
    return objective.features(model, items, pad_token_id(tokenizer), batch_size).numpy()


def probe(model, tokenizer, train: Sequence[Example], tests: Sequence[Example], labels: Sequence[str], *,
          max_length: int, max_train: int = 256, seed: int = 0) -> dict | None:
    """Fit the probe (``classification.fit_linear``, the start of a ``head_init: probe`` head) on up to
    ``max_train`` labelled training examples, answer ``tests``; None when there is too little to fit (under
    two labels or fewer than 8 examples). Returns the predictions (answer strings, in
    ``tests`` order), the examples fitted on and the wall time."""
    import torch

    from ..objectives.classification import fit_linear
    pool = labelled(train, labels)
    if len(pool) > max_train:
        pool = random.Random(seed).sample(pool, max_train)
    classes = sorted({ex.reference for ex in pool})
    if len(pool) < 8 or len(classes) < 2 or not tests:
        return None
    t0 = time.perf_counter()
    x = features(model, tokenizer, list(pool) + list(tests), max_length)
    weight, bias = fit_linear(x[:len(pool)], [classes.index(ex.reference) for ex in pool], len(classes))
    logits = torch.from_numpy(x[len(pool):]) @ weight.T + bias
    preds = [classes[int(i)] for i in logits.argmax(dim=-1)]
    return {"predictions": preds, "train_examples": len(pool), "classes": len(classes),
            "wall_s": time.perf_counter() - t0}
