"""Generation primitives shared by evaluation, objectives, export and serving: prompt rendering, eos/pad ids,
the inference context, batched greedy decoding (left padding, KV cache) and streamed chat replies."""
from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a reply: the tokenizer's eos first, then the model's own eos id(s)."""
    ids: list[int] = []

    def add(value) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))

    add(tokenizer.eos_token_id)
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None:
        add(gen_config.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer has no end-of-sequence token; cannot tell where replies end")
    return ids


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, falling back to its (first) eos id."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return eos_token_ids(tokenizer)[0]


def model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


@contextmanager
def inference(model, tokenizer):
    """Eval mode and left padding with a pad token for the duration; restored afterwards."""
    was_training = model.training
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id(tokenizer))
    try:
        yield
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None
        model.train(was_training)


@contextmanager
def merged_for_inference(model):
    """Fold a peft adapter into the base weights while generating (as fast as the base model),
    then restore the exact original base weights."""
    layers = [m for m in model.modules() if hasattr(m, "merge") and hasattr(m, "base_layer")] \
        if callable(getattr(model, "merge_adapter", None)) else []
    if not layers or any(getattr(m, "merged", False) for m in layers):
        yield
        return
    saved = {id(m): m.base_layer.weight.detach().clone() for m in layers}
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for m in layers:
                m.base_layer.weight.copy_(saved[id(m)])


def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The chat-template text of ``messages`` followed by the assistant generation prompt."""
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


SHARED_PREFIX_MIN = 32      # tokens a batch's prompts (or training rows) must share before their prefix runs once


def accepts(model, name: str) -> bool:
    """Whether ``model``'s forward (the base model's, under a peft wrapper) can take keyword ``name``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def last_logits_only(model) -> dict:
    """Forward keywords that keep only the last position's logits, where the model supports it."""
    return {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every row starts with."""
    shortest = min(len(r) for r in rows)
    for i in range(shortest):
        tok = rows[0][i]
        if any(r[i] != tok for r in rows):
            return i
    return shortest


def shared_prefix_batch(model, rows: Sequence[Sequence[int]], pad: int, device, share: bool = True):
    """``(input_ids, attention_mask, cache)`` for generating from token ``rows``.

    When the rows share a long prefix (a system prompt, few-shot examples), it is computed once and its
    keys/values repeated for every row; the padding then sits between the prefix and each row's own
    part (the positions come from the mask, so every row sees the positions it would see alone).
    Otherwise (or with ``share`` false) the rows are left-padded and ``cache`` is None.
    """
    width = max(len(r) for r in rows)
    start = common_prefix(rows) - 1 if len(rows) > 1 else 0      # each row keeps at least one own token
    cfg = getattr(model, "active_peft_config", None)
    cache = None
    if share and start >= SHARED_PREFIX_MIN and not getattr(cfg, "is_prompt_learning", False):
        cache = model(input_ids=torch.tensor([list(rows[0][:start])], device=device), use_cache=True,
                      **last_logits_only(model)).past_key_values
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):      # left padding, nothing shared
        ids = [[pad] * (width - len(r)) + list(r) for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        return torch.tensor(ids, device=device), torch.tensor(mask, device=device), None
    cache.batch_repeat_interleave(len(rows))
    ids = [list(r[:start]) + [pad] * (width - len(r)) + list(r[start:]) for r in rows]
    mask = [[1] * start + [0] * (width - len(r)) + [1] * (len(r) - start) for r in rows]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device), cache


def generate(model, tokenizer, prompts: Sequence[Sequence[dict]], max_new_tokens: int,
             batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy replies to chat ``prompts`` (lists of ``{"role", "content"}``), in input order.

    Prompts are rendered with the chat template, sorted by token length so each batch pads
    little, and decoded with the KV cache; a prefix every prompt of a batch shares is computed once
    (:func:`shared_prefix_batch`), otherwise the batch is left-padded. Only the new tokens are decoded (special
    tokens skipped, whitespace stripped). ``progress(n_done)`` is called after each batch.
    Works for plain transformers causal LMs and peft ``PeftModel`` wrappers.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    texts = [render_prompt(tokenizer, msgs) for msgs in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
    replies: list[str | None] = [None] * len(texts)
    device = model_device(model)
    eos, pad = eos_token_ids(tokenizer, model), pad_token_id(tokenizer)
    # generate() refuses a ready cache beside a configured cache implementation (static, hybrid, ...)
    share = not getattr(getattr(model, "generation_config", None), "cache_implementation", None)

    with inference(model, tokenizer), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            rows = [tokenizer(texts[i], add_special_tokens=False)["input_ids"] for i in idx]
            input_ids, mask, cache = shared_prefix_batch(model, rows, pad, device, share=share)
            out = model.generate(input_ids=input_ids, attention_mask=mask, past_key_values=cache,
                                 do_sample=False, max_new_tokens=max_new_tokens, use_cache=True,
                                 pad_token_id=pad, eos_token_id=eos)
            new_tokens = out[:, input_ids.shape[1]:].tolist()
            for i, tokens in zip(idx, new_tokens):
                replies[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            if progress is not None:
                progress(start + len(idx))
    return replies  # type: ignore[return-value]


def stream_chat(model, tokenizer, messages: Sequence[dict], max_new_tokens: int,
                temperature: float = 0.0) -> Iterator[str]:
    """Yield the reply to ``messages`` piece by piece as it is generated.

    Greedy when ``temperature`` is 0, sampled otherwise. Generation runs in a worker thread
    feeding a ``TextIteratorStreamer``; an error there is re-raised here.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    stop = threading.Event()

    class _StopWhenClosed(StoppingCriteria):
        """Ends generation once the consumer stops iterating (e.g. Ctrl-C in the chat)."""

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    text = render_prompt(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    device = model_device(model)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": float(temperature)} if temperature > 0 \
        else {"do_sample": False}
    kwargs = dict(input_ids=enc["input_ids"].to(device),
                  attention_mask=enc["attention_mask"].to(device),
                  max_new_tokens=max_new_tokens, use_cache=True, streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([_StopWhenClosed()]),
                  pad_token_id=pad_token_id(tokenizer), eos_token_id=eos_token_ids(tokenizer, model),
                  **sampling)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as e:  # surfaced in the consuming thread below
            failure.append(e)
            streamer.end()

    was_training = model.training
    model.eval()
    thread = threading.Thread(target=work, name="tunesmith-chat", daemon=True)
    thread.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        stop.set()
        thread.join()
        model.train(was_training)
    if failure:
        raise failure[0]
