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
    """``(len(examples), hidden)`` float32 features: the head's input for each example's prompt.

    A prompt prefix every row of a batch shares (a long system prompt) runs once and its keys/values are
    repeated (``generation.shared_prefix_batch``); the rows are padded between the prefix and their own part,
    with positions from the mask, so each row's last-token state is the one it has alone."""
    import torch

    from ..generation import inference, model_device, pad_token_id, shared_prefix_batch
    from ..objectives.classification import ClassificationObjective
    from ..objectives.sft import core_model
    objective = ClassificationObjective(max_length=max_length)
    ids = [objective.prompt_ids(tokenizer, ex.prompt_messages)[0] for ex in examples]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))         # similar lengths share a batch
    out: np.ndarray | None = None
    pad, device = pad_token_id(tokenizer), model_device(model)
    decoder = core_model(model).get_decoder()
    with inference(model, tokenizer), torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch, mask, cache = shared_prefix_batch(model, [ids[r] for r in rows], pad, device)
            done = cache.get_seq_length() if cache is not None else 0
            hidden = decoder(input_ids=batch[:, done:], attention_mask=mask, past_key_values=cache,
                             position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, done:],
                             use_cache=cache is not None).last_hidden_state
            pooled = hidden[:, -1].float().cpu().numpy()        # rows end at the right edge (padded inside)
            if out is None:
                out = np.zeros((len(ids), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


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
