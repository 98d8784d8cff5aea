"""Label-safe decoding: the reply is one of a fixed set of label strings, chosen by the model's own probabilities.

Every label is scored as the complete reply (its tokens, then the end-of-turn token) after the rendered prompt:
the prompt is run once per batch (a prefix all its prompts share, once), its KV cache is repeated for the labels, and the labels' tokens are scored in one
more forward pass. The answer is the most probable label, so it is always valid; the probabilities, normalised over
the label set, sum to 1 and feed calibration and top-2 confusions. This is exactly what a token trie over the
tokenised labels with renormalisation at each branch computes, without a step per trie node.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .generation import (eos_token_ids, inference, last_logits_only, model_device, pad_token_id, render_prompt,
                         shared_prefix_batch)

MAX_LABELS = 256      # beyond this a label set is not a "small set": decode freely


@dataclass
class LabelChoice:
    """One constrained answer: the label and the probability of every label (same order as the label set)."""
    label: str
    probs: list[float]

    def top(self, labels: Sequence[str], k: int = 2) -> list[tuple[str, float]]:
        order = sorted(range(len(labels)), key=lambda i: -self.probs[i])[:k]
        return [(labels[i], self.probs[i]) for i in order]


def label_token_ids(tokenizer, labels: Sequence[str], model=None) -> list[list[int]]:
    """Each label's reply tokens followed by the end-of-turn token; a label set whose tokenisations collide is
    an error (the labels could not be told apart)."""
    if not labels:
        raise ValueError("label-safe decoding needs at least one label")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels is more than label-safe decoding handles ({MAX_LABELS})")
    end = eos_token_ids(tokenizer, model)[0]
    out, seen = [], {}
    for label in labels:
        ids = list(tokenizer(str(label), add_special_tokens=False)["input_ids"]) + [end]
        key = tuple(ids)
        if key in seen:
            raise ValueError(f"labels {seen[key]!r} and {label!r} tokenise the same")
        seen[key] = label
        out.append(ids)
    return out


def _uses_virtual_tokens(model) -> bool:
    """peft prompt/prefix tuning manage their own cache: the prompt cannot be reused for the labels."""
    config = getattr(model, "peft_config", None)
    return bool(config) and any(getattr(c, "is_prompt_learning", False) for c in config.values())


def _score_batch(model, tokenizer, texts: list[str], seqs: list[list[int]], device, pad: int) -> torch.Tensor:
    """Log-probability of each label sequence after each prompt: a (prompts, labels) tensor."""
    n_labels, width = len(seqs), max(len(s) for s in seqs)
    lab = torch.full((n_labels, width), pad, dtype=torch.long)
    lab_mask = torch.zeros((n_labels, width), dtype=torch.long)
    for j, s in enumerate(seqs):
        lab[j, :len(s)] = torch.tensor(s)
        lab_mask[j, :len(s)] = 1
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    virtual = _uses_virtual_tokens(model)
    if virtual:
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        ids, mask, cache = enc["input_ids"].to(device), enc["attention_mask"].to(device), None
    else:       # a prompt prefix every row shares (the system prompt) runs once
        ids, mask, cache = shared_prefix_batch(model, rows, pad, device)
    b = ids.shape[0]
    lab, lab_mask = lab.to(device).repeat(b, 1), lab_mask.to(device).repeat(b, 1)      # (b * labels, width)
    full_mask = torch.cat([mask.repeat_interleave(n_labels, 0), lab_mask], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    if virtual:
        # no reusable prompt cache: prompt + label in one pass (labels x the prompt work; fine for small sets)
        out = model(input_ids=torch.cat([ids.repeat_interleave(n_labels, 0), lab], dim=1), attention_mask=full_mask)
        logits = out.logits[:, -(width + 1):-1]      # (virtual tokens, if any, come first)
    else:
        start = cache.get_seq_length() if cache is not None else 0
        first = model(input_ids=ids[:, start:], attention_mask=mask, past_key_values=cache,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, start:], use_cache=True,
                      **last_logits_only(model))       # only the last position's logits: the first label token
        cache = first.past_key_values
        cache.batch_repeat_interleave(n_labels)
        rest = model(input_ids=lab[:, :-1], attention_mask=full_mask[:, :-1], past_key_values=cache,
                     position_ids=positions[:, ids.shape[1]:-1], use_cache=True) if width > 1 else None
        head = first.logits[:, -1:].repeat_interleave(n_labels, 0)
        logits = head if rest is None else torch.cat([head, rest.logits], dim=1)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, lab.unsqueeze(-1)).squeeze(-1)
    return (logp * lab_mask).sum(-1).view(b, n_labels)


def choose_labels(model, tokenizer, prompts: Sequence[Sequence[dict]], labels: Sequence[str], batch_size: int = 16,
                  progress: Callable[[int], None] | None = None) -> list[LabelChoice]:
    """The most probable label for each chat prompt, with the probabilities over ``labels`` (in input order)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    labels = [str(x) for x in labels]
    seqs = label_token_ids(tokenizer, labels, model)
    texts = [render_prompt(tokenizer, msgs) for msgs in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
    # the repeated cache holds prompts x labels rows: keep a batch's rows near batch_size * 8
    per_batch = max(1, min(batch_size, (batch_size * 8) // len(labels)))
    out: list[LabelChoice | None] = [None] * len(texts)
    device, pad = model_device(model), pad_token_id(tokenizer)
    with inference(model, tokenizer), torch.inference_mode():
        for start in range(0, len(order), per_batch):
            idx = order[start:start + per_batch]
            scores = _score_batch(model, tokenizer, [texts[i] for i in idx], seqs, device, pad)
            probs = torch.softmax(scores, dim=-1)
            for row, i in enumerate(idx):
                p = probs[row].tolist()
                out[i] = LabelChoice(labels[max(range(len(labels)), key=p.__getitem__)], p)
            if progress is not None:
                progress(start + len(idx))
    return out  # type: ignore[return-value]


__all__ = ["LabelChoice", "MAX_LABELS", "choose_labels", "label_token_ids"]
