"""Generation engine: batched decoding with per-request sampling, stop strings, logprobs, streaming."""
from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass, field

import torch

# ---- requests and events --------------------------------------------------------------------------


@dataclass
class SamplingParams:
    """What one request asks of the decoder (OpenAI semantics)."""

    max_tokens: int
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class TokenLogprob:
    """One generated token's log-probability (raw model distribution) and its top alternatives."""

    token: str
    logprob: float
    bytes: list[int]
    offset: int                                            # character offset in the choice's text
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass
class Event:
    """What the engine tells a request: ``start`` (batch began), ``delta`` (new text), ``finish``
    (one choice ended) or ``error``."""

    kind: str
    index: int = 0
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None


class GenerationRequest:
    """One API request: one or more prompts, ``n`` choices each, a sink for events.

    ``emit(event)`` is called from the engine thread; it must be thread-safe and must not block.
    Choice ``index`` is ``prompt_number * n + j``; choice ``j`` samples with seed ``seed + j``.
    """

    def __init__(self, model_id: str, prompts: Seq[Seq[int]], params: SamplingParams,
                 emit: Callable[[Event], None], n: int = 1):
        if not prompts or n < 1:
            raise ValueError("a request needs at least one prompt and n >= 1")
        self.model_id = model_id
        self.params = params
        self.emit = emit
        self.n = n
        self.cancelled = False
        self.enqueued_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.prompt_tokens = sum(len(p) for p in prompts)
        base_seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(6), "little")
        self.sequences = [GenSequence(self, p_i * n + j, list(prompt), base_seed + j)
                          for p_i, prompt in enumerate(prompts) for j in range(n)]

    def cancel(self) -> None:
        self.cancelled = True


# ---- tokens -> text ---------------------------------------------------------------------------------


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


class TokenText:
    """Decoding helpers for one tokenizer: whole-sequence text, single-token text and raw bytes.

    Fast tokenizers are shared with request handlers, so every call holds ``lock``.
    """

    def __init__(self, tokenizer, lock: threading.Lock | None = None):
        self.tokenizer = tokenizer
        self.lock = lock or threading.Lock()
        self._piece: dict[int, tuple[str, list[int]]] = {}

    def decode(self, ids: Seq[int]) -> str:
        with self.lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def piece(self, token_id: int) -> tuple[str, list[int]]:
        """``(text, bytes)`` of one token; bytes are exact for byte-level BPE (partial UTF-8 too)."""
        hit = self._piece.get(token_id)
        if hit is None:
            with self.lock:
                text = self.tokenizer.decode([token_id], skip_special_tokens=False)
                raw = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(raw, str) and raw and all(ch in _BYTE_DECODER for ch in raw) \
                    and text not in self.tokenizer.all_special_tokens:
                data = [_BYTE_DECODER[ch] for ch in raw]
            else:
                data = list(text.encode("utf-8"))
            hit = self._piece[token_id] = (text, data)
        return hit


# ---- one choice being generated ---------------------------------------------------------------------


class GenSequence:
    """Decoding state of one choice: tokens, text, what has been emitted, stop handling."""

    def __init__(self, request: GenerationRequest, index: int, prompt_ids: list[int], seed: int):
        self.request = request
        self.index = index
        self.prompt_ids = prompt_ids
        self.params = request.params
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.tokens: list[int] = []
        self.n_generated = 0                    # includes an end-of-sequence token
        self.text = ""
        self.emitted = 0
        self.pending: list[TokenLogprob] = []
        self.finished = False
        self.counts: dict[int, int] = {}

    # -- sampling state
    def rng(self) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        return self.generator

    # -- emission
    def _emit_upto(self, end: int, flush: bool = False) -> None:
        release = [e for e in self.pending if e.offset < end or flush]
        if end > self.emitted or release:
            self.pending = [] if flush else [e for e in self.pending if e.offset >= end]
            piece = self.text[self.emitted:end] if end > self.emitted else ""
            self.emitted = max(self.emitted, end)
            self.request.emit(Event("delta", index=self.index, text=piece, logprobs=release))

    def _finish(self, reason: str) -> None:
        self._emit_upto(len(self.text), flush=True)
        self.finished = True
        self.request.emit(Event("finish", index=self.index, finish_reason=reason,
                                completion_tokens=self.n_generated))

    def abort(self) -> None:
        self.finished = True

    def accept(self, token_id: int, is_eos: bool, decoder: TokenText, entry: TokenLogprob | None) -> bool:
        """Take the next generated token; emit what is safe to show; return True when finished."""
        self.n_generated += 1
        if is_eos:
            self._finish("stop")
            return True
        self.tokens.append(token_id)
        self.counts[token_id] = self.counts.get(token_id, 0) + 1
        before = len(self.text)
        self.text = decoder.decode(self.tokens)
        if entry is not None:
            entry.offset = min(before, len(self.text))
            self.pending.append(entry)
        stops = self.params.stop
        if stops:
            longest = max(len(s) for s in stops)
            start = max(0, min(before, self.emitted) - longest + 1)
            hits = [i for i in (self.text.find(s, start) for s in stops) if i >= 0]
            if hits:
                cut = min(hits)
                self.text = self.text[:cut]
                self.pending = [e for e in self.pending if e.offset < cut]
                self._finish("stop")
                return True
        if self.n_generated >= self.params.max_tokens:
            self._finish("length")
            return True
        safe = len(self.text)
        while safe > self.emitted and self.text[safe - 1] == "\ufffd":   # an incomplete UTF-8 character
            safe -= 1
        for s in stops:                     # hold back a suffix that may grow into a stop string
            for k in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                if self.text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        self._emit_upto(safe)
        return False


# ---- choosing the next tokens -------------------------------------------------------------------------


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (the first always)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    remove = (probs.cumsum(-1) - probs) >= top_p
    remove[0] = False
    out = logits.clone()
    out[order[remove]] = float("-inf")
    return out


def choose_tokens(seqs: Seq[GenSequence], logits: torch.Tensor, decoder: TokenText
                  ) -> list[tuple[int, TokenLogprob | None]]:
    """The next token of each row of ``logits`` (float32, one row per sequence) and its logprobs.

    Greedy rows take the argmax of the (bias/penalty-adjusted) logits; sampled rows divide by the
    temperature, apply top-p and draw with the sequence's own seeded generator. Reported logprobs
    are those of the raw model distribution.
    """
    proc = logits
    adjusted = [i for i, s in enumerate(seqs) if s.params.logit_bias or
                (s.counts and (s.params.presence_penalty or s.params.frequency_penalty))]
    if adjusted:
        proc = logits.clone()
        for i in adjusted:
            p = seqs[i].params
            for tok, bias in p.logit_bias.items():
                if 0 <= tok < proc.shape[1]:
                    proc[i, tok] += bias
            if seqs[i].counts and (p.presence_penalty or p.frequency_penalty):
                ids = torch.tensor(list(seqs[i].counts), device=proc.device)
                cnt = torch.tensor(list(seqs[i].counts.values()), dtype=proc.dtype, device=proc.device)
                ids_ok = ids < proc.shape[1]
                proc[i, ids[ids_ok]] -= p.presence_penalty + p.frequency_penalty * cnt[ids_ok]
    chosen = proc.argmax(dim=-1).tolist()
    for i, s in enumerate(seqs):
        if s.params.temperature > 0:
            row = proc[i].float() / s.params.temperature
            if s.params.top_p < 1.0:
                row = _top_p_filter(row, s.params.top_p)
            probs = torch.softmax(row, dim=-1).cpu()
            chosen[i] = int(torch.multinomial(probs, 1, generator=s.rng()).item())
    want = [i for i, s in enumerate(seqs) if s.params.logprobs]
    entries: list[TokenLogprob | None] = [None] * len(seqs)
    if want:
        lp = torch.log_softmax(logits[want].float(), dim=-1)
        k = max(seqs[i].params.top_logprobs for i in want)
        top_v, top_i = (lp.topk(k, dim=-1) if k else (None, None))
        for r, i in enumerate(want):
            tok = chosen[i]
            text, data = decoder.piece(tok)
            top = []
            if k:
                for v, t in zip(top_v[r, :seqs[i].params.top_logprobs].tolist(),
                                top_i[r, :seqs[i].params.top_logprobs].tolist()):
                    t_text, t_data = decoder.piece(t)
                    top.append((t_text, float(v), t_data))
            entries[i] = TokenLogprob(text, float(lp[r, tok]), data, 0, top)
    return list(zip(chosen, entries))


# ---- batched decoding with a transformers model ------------------------------------------------------


def _new_cache(model):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _left_pad(seqs: Seq[GenSequence], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s.prompt_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids, dtype=torch.long)
        mask[r, width - len(s.prompt_ids):] = 1
    return ids.to(device), mask.to(device)


def joinable(cache) -> bool:
    """Whether rows of another cache can be appended: plain full-attention layers only."""
    from transformers.cache_utils import DynamicLayer
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.keys is not None for layer in layers)


def _join(a: tuple, b: tuple) -> tuple:
    """Append batch ``b`` (cache, mask, last positions) to ``a``: the shorter one is left-padded in
    its cached keys/values and its mask, so every row keeps its own tokens and positions."""
    cache, mask, last = a
    other, other_mask, other_last = b
    width = max(mask.shape[1], other_mask.shape[1])

    def pad(t: torch.Tensor, n: int) -> torch.Tensor:
        return t if n == 0 else torch.cat([t.new_zeros(*t.shape[:-2], n, t.shape[-1]), t], dim=-2)

    da, db = width - mask.shape[1], width - other_mask.shape[1]
    for la, lb in zip(cache.layers, other.layers):
        la.keys = torch.cat([pad(la.keys, da), pad(lb.keys, db)], dim=0)
        la.values = torch.cat([pad(la.values, da), pad(lb.values, db)], dim=0)
    mask = torch.cat([torch.nn.functional.pad(mask, (da, 0)), torch.nn.functional.pad(other_mask, (db, 0))], dim=0)
    return cache, mask, torch.cat([last, other_last], dim=0)


def decode_batch(model, decoder: TokenText, eos_ids: Seq[int], pad_id: int, seqs: list[GenSequence],
                 admit: Callable[[int], list[GenSequence]] | None = None, max_rows: int | None = None) -> int:
    """Generate ``seqs`` together: left padding, one prefill, then one token per step for each
    unfinished row with the KV cache; finished or cancelled rows leave the batch at once.

    With ``admit(free_rows) -> new sequences``, newcomers join between steps (continuous batching):
    they are prefilled on their own, then their cache rows are appended to the running batch (left
    padded), so short replies do not hold back queued requests until the longest reply ends.

    Inputs mirror ``transformers.generate`` (position ids from the attention mask, the mask dropped
    when nothing is padded, logits only for the last position), so greedy decoding gives the same
    tokens as ``tunesmith.eval.generate.generate`` for a single prompt. Returns tokens generated.
    """
    device = model_device(model)
    eos = {int(e) for e in eos_ids}
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    max_rows = max_rows or len(seqs)
    generated = 0

    def advance(rows: list[GenSequence], logits: torch.Tensor) -> tuple[list[int], list[int]]:
        nonlocal generated
        picks = choose_tokens(rows, logits, decoder)
        now = time.perf_counter()
        keep, tokens = [], []
        for r, (s, (tok, entry)) in enumerate(zip(rows, picks)):
            if s.request.first_token_at is None:
                s.request.first_token_at = now
            generated += 1
            if s.request.cancelled:
                s.abort()
                continue
            if not s.accept(tok, tok in eos, decoder, entry):
                keep.append(r)
                tokens.append(tok)
        return keep, tokens

    def forward(ids, mask, positions, cache):
        return model(input_ids=ids, attention_mask=None if bool(mask.all()) else mask, position_ids=positions,
                     past_key_values=cache, use_cache=True, **extra).logits[:, -1, :].float()

    state = None                 # (cache, mask, last positions) of the live rows
    live: list[GenSequence] = []
    tokens: list[int] = []
    pending = list(seqs)
    with torch.inference_mode():
        while True:
            if pending:                                   # prefill newcomers, then merge them in
                ids, mask = _left_pad(pending, pad_id, device)
                positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
                cache = _new_cache(model)
                keep, first = advance(pending, forward(ids, mask, positions, cache))
                if keep:
                    if len(keep) < len(pending):
                        index = torch.tensor(keep, device=device)
                        cache.batch_select_indices(index)
                        mask, positions = mask[index], positions[index]
                    fresh = (cache, mask, positions[:, -1:])
                    state = fresh if state is None else _join(state, fresh)
                    live += [pending[r] for r in keep]
                    tokens += first
                pending = []
            if not live:
                return generated
            cache, mask, last = state
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last = last + 1
            step = torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(1)
            keep, tokens = advance(live, forward(step, mask, last, cache))
            if len(keep) < len(live):
                if keep:
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask, last = mask[index], last[index]
                live = [live[r] for r in keep]
            state = (cache, mask, last)
            if admit is not None and live and len(live) < max_rows and joinable(cache):
                pending = admit(max_rows - len(live))


# ---- the scheduler ---------------------------------------------------------------------------------------


class Engine:
    """One scheduler thread: collects queued requests for the same model (up to ``max_batch_size``
    rows, waiting up to ``batch_wait_ms`` after the oldest arrived) and generates them together;
    while the batch runs, newly queued requests for the same model join it between decoding steps
    (as long as the oldest queued request is for that model).

    ``acquire(model_id)`` (from the registry) returns a runner with ``run(seqs, admit) -> tokens``
    that decodes a batch; it is only ever called from the scheduler thread, so loading, evicting and
    switching adapters never race with generation.
    """

    def __init__(self, acquire: Callable[[str], object], *, max_batch_size: int = 8, batch_wait_ms: float = 10.0,
                 metrics=None):
        self.acquire = acquire
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.metrics = metrics
        self._queue: list[GenerationRequest] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.running = 0

    # -- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="tunesmith-serve-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for req in pending:
            req.emit(Event("error", error=RuntimeError("the server is shutting down")))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- queue
    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._queue.append(request)
            self._gauge()
            self._cond.notify_all()

    def queue_depth(self) -> int:
        with self._cond:
            return sum(len(r.sequences) for r in self._queue)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(sum(len(r.sequences) for r in self._queue))

    def _next_batch(self) -> list[GenerationRequest] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._queue[0]
            deadline = first.enqueued_at + self.batch_wait_s
            while not self._stopping:
                rows = sum(len(r.sequences) for r in self._queue if r.model_id == first.model_id)
                left = deadline - time.perf_counter()
                if rows >= self.max_batch_size or left <= 0:
                    break
                self._cond.wait(left)
            batch, rows = [], 0
            for req in list(self._queue):
                if req.model_id != first.model_id:
                    continue
                if batch and rows + len(req.sequences) > self.max_batch_size:
                    break
                batch.append(req)
                rows += len(req.sequences)
                self._queue.remove(req)
            self._gauge()
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [r for r in batch if not r.cancelled]
            if batch:
                self._run(batch)

    def _admit(self, model_id: str, free: int, batch: list[GenerationRequest]) -> list[GenSequence]:
        """Queued requests for ``model_id`` that may join the running batch: only while the oldest
        queued request is for this model (FIFO fairness between models) and only whole requests."""
        taken: list[GenerationRequest] = []
        rows = 0
        with self._cond:
            while self._queue and self._queue[0].model_id == model_id:
                req = self._queue[0]
                if req.cancelled:
                    self._queue.pop(0)
                    continue
                if rows + len(req.sequences) > free:
                    break
                taken.append(self._queue.pop(0))
                rows += len(req.sequences)
            self._gauge()
        for r in taken:
            r.emit(Event("start", prompt_tokens=r.prompt_tokens))
        if taken:
            batch.extend(taken)
            self.running = self.max_batch_size - free + rows
            if self.metrics is not None:
                self.metrics.batch_size.observe(self.running)
                self.metrics.running.set(self.running)
        return [s for r in taken for s in r.sequences]

    def _run(self, batch: list[GenerationRequest]) -> None:
        model_id = batch[0].model_id
        seqs = [s for r in batch for s in r.sequences]
        try:
            runner = self.acquire(model_id)
        except BaseException as e:   # reported to every request of the batch
            for r in batch:
                r.emit(Event("error", error=e))
            return
        for r in batch:
            r.emit(Event("start", prompt_tokens=r.prompt_tokens))
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(seqs))
            self.metrics.running.set(len(seqs))
        self.running = len(seqs)
        t0 = time.perf_counter()
        try:
            generated = runner.run(seqs, lambda free: self._admit(model_id, free, batch))
        except BaseException as e:
            for r in batch:
                r.emit(Event("error", error=e))
            generated = 0
        finally:
            self.running = 0
            if self.metrics is not None:
                self.metrics.running.set(0)
        wall = time.perf_counter() - t0
        if self.metrics is not None and generated and wall > 0:
            self.metrics.batch_throughput.set(generated / wall)
