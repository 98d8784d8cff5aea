"""Chat-template rendering, assistant-only label masking, packing, and length-grouped batching."""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import TunesmithError
from .example import Example

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None   # set for packed sequences (restarts at each example)
    truncated: bool = False                  # whether tokens were cut to fit max_length

    @property
    def n_trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)

    @property
    def length(self) -> int:
        return len(self.input_ids)


def _end_of_turn(tokenizer) -> str | None:
    return tokenizer.eos_token


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` with the chat template; return the text and the character spans to train.

    Each trained assistant turn's span runs from the start of its content through its end-of-turn
    token (so the model learns to stop); the template's text after that token is not trained.
    Assistant turns with ``weight: 0`` are not trained.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    eot = _end_of_turn(tokenizer)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(prefix):
            raise TunesmithError("the model's chat template does not render conversations incrementally, "
                                 "so assistant turns cannot be located for loss masking", field="model.name")
        start = len(prefix)
        content_at = through.find(m["content"], start)
        if content_at >= 0:
            start = content_at
        end = len(through)
        if eot:
            cut = through.find(eot, content_at + len(m["content"]) if content_at >= 0 else start)
            if cut >= 0:
                end = cut + len(eot)
        spans.append((start, end))
    return text, spans


def _prompt_cut(ex: Example, text: str, spans, offsets, need: int) -> tuple[int, int] | None:
    """Token range to remove from the middle of the last user message before the first trained
    reply, so a long prompt is shortened instead of its answer being cut off; None if too short."""
    first = min(a for a, _ in spans)
    for m in reversed([m for m in ex.messages if m["role"] == "user"]):
        start = text.rfind(m["content"], 0, first)
        if start >= 0:
            break
    else:
        return None
    end = start + len(m["content"])
    inside = [j for j, (s, e) in enumerate(offsets) if s >= start and e <= end and e > s]
    if len(inside) < need + 8:            # keep some of the message on both sides
        return None
    lo = inside[0] + (len(inside) - need) // 2
    return lo, lo + need


def tokenize_example(ex: Example, tokenizer, max_length: int) -> Tokenized | None:
    """Tokenise one example; labels are the trained tokens, others ``IGNORE``.

    A chat example longer than ``max_length`` loses tokens from the middle of its last user
    message (its instructions at both ends and the answer survive); if that message is too short,
    the sequence is cut at the end. Returns None when no trained token is left.
    """
    if not ex.messages:
        ids = tokenizer(ex.text or "", add_special_tokens=False).input_ids
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        cut = len(ids) > max_length
        ids = ids[:max_length]
        return Tokenized(ids, list(ids), truncated=cut) if len(ids) > 1 else None
    text, spans = assistant_spans(ex.messages, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for j, (s, e) in enumerate(offsets):
        if e > s and any(a <= s < b for a, b in spans):
            labels[j] = ids[j]
    cut = len(ids) > max_length
    if cut and spans:
        gap = _prompt_cut(ex, text, spans, offsets, len(ids) - max_length)
        if gap is not None:
            ids, labels = ids[:gap[0]] + ids[gap[1]:], labels[:gap[0]] + labels[gap[1]:]
    out = Tokenized(ids[:max_length], labels[:max_length], truncated=cut)
    return out if out.n_trained else None


def tokenize_all(examples: list[Example], tokenizer, max_length: int) -> tuple[list[Tokenized], dict]:
    """Tokenise a split; returns the kept sequences and counts of truncated/dropped examples."""
    kept, truncated, dropped = [], 0, 0
    for ex in examples:
        t = tokenize_example(ex, tokenizer, max_length)
        if t is None:
            dropped += 1
            continue
        truncated += t.truncated
        kept.append(t)
    return kept, {"examples": len(examples), "kept": len(kept), "truncated": truncated,
                  "dropped_no_trained_tokens": dropped,
                  "tokens": sum(len(t.input_ids) for t in kept),
                  "trained_tokens": sum(t.n_trained for t in kept)}


def pack(seqs: list[Tokenized], max_length: int, seed: int = 0) -> list[Tokenized]:
    """Greedy first-fit-decreasing packing into sequences of at most ``max_length`` tokens.

    Position ids restart at every example, which makes transformers build a block-diagonal
    causal mask (no attention across examples) when no padding mask is passed.
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].input_ids))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(seqs[i].input_ids)
        for b, r in enumerate(room):
            if n <= r:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_length - n)
    random.Random(seed).shuffle(bins)
    packed = []
    for b in bins:
        ids, labels, pos = [], [], []
        for i in b:
            ids += seqs[i].input_ids
            # the first token of each example is never a target of the previous one
            labels += [IGNORE] + seqs[i].labels[1:]
            pos += list(range(len(seqs[i].input_ids)))
        packed.append(Tokenized(ids, labels, pos))
    return packed


def batches(seqs: list, batch_size: int, *, seed: int, shuffle: bool = True,
            group_by_length: bool = True) -> list[list[int]]:
    """Index batches for one epoch: shuffled, and grouped by length inside windows to cut padding.

    Items are anything with a ``length`` (tokens it contributes to a batch)."""
    idx = list(range(len(seqs)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(idx)
    if group_by_length:
        window = batch_size * 32
        idx = [i for w in range(0, len(idx), window)
               for i in sorted(idx[w:w + window], key=lambda k: seqs[k].length)]
    out = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    if shuffle:
        rng.shuffle(out)
    return out


def collate(seqs: list[Tokenized], pad_id: int):
    """Right-pad sequences into tensors ``input_ids``, ``labels`` and a mask or positions.

    Every collate function of an objective also returns ``n_tokens`` (real, non-pad tokens) and
    ``n_loss`` (the units the loss is summed over: here, target tokens), which the loop uses for
    throughput and for exact loss normalisation across gradient accumulation."""
    import torch

    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    packed = any(s.position_ids is not None for s in seqs)
    extra = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[r, :n] = torch.tensor(s.input_ids)
        labels[r, :n] = torch.tensor(s.labels)
        if packed:
            pos = s.position_ids or list(range(n))
            extra[r, :n] = torch.tensor(pos)
            extra[r, n:] = torch.arange(width - n)    # padding forms its own segment
        else:
            extra[r, :n] = 1
    batch = {"input_ids": ids, "labels": labels}
    batch["position_ids" if packed else "attention_mask"] = extra
    batch["n_tokens"] = sum(len(s.input_ids) for s in seqs)
    batch["n_loss"] = int((labels[:, 1:] != IGNORE).sum())
    return batch
