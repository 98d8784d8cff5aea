"""Generation engine: batched decoding with per-request sampling, stop strings, logprobs, streaming.

One request's failure (its seed, logit bias, sampling, stop handling, prefill) ends that request
only; the batch goes on for the others."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence as Seq
from contextlib import nullcontext

import torch

from ..generation import last_logits_only
from .sampling import (GREEDY_BELOW, Event, GenerationRequest, GenSequence, InvalidParameter, SamplingParams,
                       TokenLogprob)
from .tokens import TokenText

__all__ = ["Engine", "Event", "GenerationRequest", "GenSequence", "InvalidParameter", "SamplingParams",
           "TokenLogprob", "TokenText", "choose_tokens", "decode_batch", "joinable", "model_device"]

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


def _adjust(row: torch.Tensor, seq: GenSequence) -> None:
    """Apply the sequence's logit bias and presence/frequency penalties to its logits row, in place."""
    p, width = seq.params, row.shape[0]
    if p.logit_bias:
        ids, values = seq.bias()
        ok = ids < width
        row[ids[ok].to(row.device)] += values[ok].to(device=row.device, dtype=row.dtype)
    if seq.counts and (p.presence_penalty or p.frequency_penalty):
        ids = torch.tensor(list(seq.counts), device=row.device)
        cnt = torch.tensor(list(seq.counts.values()), dtype=row.dtype, device=row.device)
        ok = ids < width
        row[ids[ok]] -= p.presence_penalty + p.frequency_penalty * cnt[ok]


def _sample(row: torch.Tensor, seq: GenSequence) -> int:
    row = row.float() / seq.params.temperature
    if seq.params.top_p < 1.0:
        row = _top_p_filter(row, seq.params.top_p)
    probs = torch.softmax(row, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=seq.rng()).item())


Pick = tuple[int, "TokenLogprob | None"]


def choose_tokens(seqs: Seq[GenSequence], logits: torch.Tensor, decoder: TokenText) -> list[Pick | Exception]:
    """The next token of each row of ``logits`` (float32, one row per sequence) and its logprobs.

    Greedy rows take the argmax of the (bias/penalty-adjusted) logits; sampled rows divide by the
    temperature, apply top-p and draw with the sequence's own seeded generator. Reported logprobs
    are those of the raw model distribution. A row whose own work fails (its seed, bias, sampling
    or logprobs) gets the exception instead of a pick; the other rows are unaffected.
    """
    out: list[Pick | Exception | None] = [None] * len(seqs)
    proc = logits
    adjusted = [i for i, s in enumerate(seqs) if s.params.logit_bias or
                (s.counts and (s.params.presence_penalty or s.params.frequency_penalty))]
    if adjusted:
        proc = logits.clone()
        for i in adjusted:
            try:
                _adjust(proc[i], seqs[i])
            except Exception as e:
                out[i] = e
    guided = [i for i, s in enumerate(seqs) if s.params.choices and out[i] is None]
    if guided:          # label-safe rows: only tokens that continue one of the request's choices
        proc = proc.clone() if proc is logits else proc
        for i in guided:
            allowed = sorted(seqs[i].params.allowed(seqs[i].tokens))
            keep = proc[i, allowed].clone()
            proc[i] = float("-inf")
            proc[i, allowed] = keep
    chosen = proc.argmax(dim=-1).tolist()
    for i, s in enumerate(seqs):
        if out[i] is None and s.params.temperature >= GREEDY_BELOW:
            try:
                chosen[i] = _sample(proc[i], s)
            except Exception as e:
                out[i] = e
    want = [i for i, s in enumerate(seqs) if s.params.logprobs and out[i] is None]
    entries: list[TokenLogprob | None] = [None] * len(seqs)
    if want:
        lp = torch.log_softmax(logits[want].float(), dim=-1)
        k = min(max(seqs[i].params.top_logprobs for i in want), lp.shape[-1])
        top_v, top_i = (lp.topk(k, dim=-1) if k else (None, None))
        for r, i in enumerate(want):
            try:
                tok = chosen[i]
                text, data = decoder.piece(tok)
                top = []
                n_top = min(seqs[i].params.top_logprobs, k)
                if n_top:
                    for v, t in zip(top_v[r, :n_top].tolist(), top_i[r, :n_top].tolist()):
                        t_text, t_data = decoder.piece(t)
                        top.append((t_text, float(v), t_data))
                entries[i] = TokenLogprob(text, float(lp[r, tok]), data, 0, top)
            except Exception as e:
                out[i] = e
    return [o if o is not None else (chosen[i], entries[i]) for i, o in enumerate(out)]


# ---- batched decoding with a transformers model ------------------------------------------------------


def _new_cache(model):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


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
                 admit: Callable[[int], list[GenSequence]] | None = None, max_rows: int | None = None,
                 row_inputs: Callable[[list[GenSequence]], dict] | None = None) -> int:
    """Generate ``seqs`` together: left padding, one prefill, then one token per step for each
    unfinished row with the KV cache; finished or cancelled rows leave the batch at once.

    With ``admit(free_rows) -> new sequences``, newcomers join between steps (continuous batching):
    they are prefilled on their own, then their cache rows are appended to the running batch (left
    padded), so short replies do not hold back queued requests until the longest reply ends.

    Inputs mirror ``transformers.generate`` (position ids from the attention mask, the mask dropped
    when nothing is padded, logits only for the last position), so greedy decoding gives the same
    tokens as ``tunesmith.generation.generate`` for a single prompt. Returns tokens generated.
    ``row_inputs(rows)`` adds forward keywords for the rows of each forward pass (e.g. each row's adapter);
    ``model`` may be a function returning the model to call (it can change between passes).
    """
    current = (lambda: model) if isinstance(model, torch.nn.Module) else model
    device = model_device(current())
    eos = {int(e) for e in eos_ids}
    extra = last_logits_only(current())
    max_rows = max_rows or len(seqs)
    generated = 0

    def advance(rows: list[GenSequence], logits: torch.Tensor) -> tuple[list[int], list[int]]:
        nonlocal generated
        picks = choose_tokens(rows, logits, decoder)
        now = time.perf_counter()
        keep, tokens = [], []
        for r, (s, pick) in enumerate(zip(rows, picks)):
            if s.request.first_token_at is None:
                s.request.first_token_at = now
            generated += 1
            if isinstance(pick, Exception):          # this row's own failure: its request ends, not the batch
                s.request.fail(pick)
            if s.request.cancelled:
                s.abort()
                continue
            tok, entry = pick
            if not s.accept(tok, tok in eos, decoder, entry):
                keep.append(r)
                tokens.append(tok)
        return keep, tokens

    def prefill(group: list[GenSequence]):
        ids, mask = _left_pad(group, pad_id, device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = _new_cache(current())
        return cache, mask, positions, forward(group, ids, mask, positions, cache)

    def forward(rows, ids, mask, positions, cache):
        more = row_inputs(rows) if row_inputs is not None else {}
        return current()(input_ids=ids, attention_mask=None if bool(mask.all()) else mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, **extra, **more).logits[:, -1, :].float()

    state = None                 # (cache, mask, last positions) of the live rows
    live: list[GenSequence] = []
    tokens: list[int] = []
    pending = list(seqs)
    with torch.inference_mode():
        while True:
            groups, pending = ([pending] if pending else []), []
            while groups:                                 # prefill newcomers, then merge them in
                group = groups.pop(0)
                try:
                    cache, mask, positions, logits = prefill(group)
                except Exception as e:
                    requests = list(dict.fromkeys(s.request for s in group))
                    if len(requests) > 1:                 # find the culprit: each request on its own
                        groups[:0] = [[s for s in group if s.request is r] for r in requests]
                    else:
                        requests[0].fail(e)
                        for s in group:
                            s.abort()
                    continue
                if live and not (joinable(state[0]) and joinable(cache)):   # only after a split prefill
                    for r in dict.fromkeys(s.request for s in group):
                        r.fail(RuntimeError("this model's cache cannot add rows to a running batch"))
                    continue
                keep, first = advance(group, logits)
                if keep:
                    if len(keep) < len(group):
                        index = torch.tensor(keep, device=device)
                        cache.batch_select_indices(index)
                        mask, positions = mask[index], positions[index]
                    fresh = (cache, mask, positions[:, -1:])
                    state = _join(state, fresh) if live else fresh
                    live += [group[r] for r in keep]
                    tokens += first
            if not live:
                return generated
            cache, mask, last = state
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last = last + 1
            step = torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(1)
            keep, tokens = advance(live, forward(live, step, mask, last, cache))
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
    """One scheduler thread: collects queued requests of the same group (up to ``max_batch_size``
    rows, waiting up to ``batch_wait_ms`` after the oldest arrived) and generates them together;
    while the batch runs, newly queued requests of the group join it between decoding steps
    (as long as the oldest queued request is of that group). ``group(model_id)`` (default: the model
    id itself) puts models that can share a batch together, e.g. LoRA adapters of one base.

    ``acquire(model_id)`` (from the registry) returns a runner with ``run(seqs, admit) -> tokens``
    that decodes a batch (of every model of the first request's group); it is only ever called from
    the scheduler thread, so loading, evicting and switching adapters never race with generation.
    """

    def __init__(self, acquire: Callable[[str], object], *, max_batch_size: int = 8, batch_wait_ms: float = 10.0,
                 metrics=None, compute: Callable[[], object] = nullcontext, group: Callable[[str], str] | None = None):
        self.acquire = acquire
        self.group = group or (lambda model_id: model_id)    # requests of one group decode in one batch
        self.compute = compute          # context every batch decodes in (the serving precision's autocast)
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
        key = self.group(request.model_id)          # outside the lock: it may look the model up
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            request.group = key
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
                rows = sum(len(r.sequences) for r in self._queue if r.group == first.group)
                left = deadline - time.perf_counter()
                if rows >= self.max_batch_size or left <= 0:
                    break
                self._cond.wait(left)
            batch, rows = [], 0
            for req in list(self._queue):
                if req.group != first.group:
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
                try:
                    self._run(batch)
                except Exception as e:      # never let one batch stop the scheduler thread
                    for r in batch:
                        r.fail(e)

    def _admit(self, group: str, free: int, batch: list[GenerationRequest]) -> list[GenSequence]:
        """Queued requests of ``group`` that may join the running batch: only while the oldest
        queued request is of this group (FIFO fairness between groups) and only whole requests."""
        taken: list[GenerationRequest] = []
        rows = 0
        with self._cond:
            while self._queue and self._queue[0].group == group:
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
        except Exception as e:   # reported to every request of the batch
            for r in batch:
                r.fail(e)
            return
        for r in batch:
            r.emit(Event("start", prompt_tokens=r.prompt_tokens))
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(seqs))
            self.metrics.running.set(len(seqs))
        self.running = len(seqs)
        t0 = time.perf_counter()
        try:
            with self.compute():       # autocast state is per thread: entered in the scheduler thread
                generated = runner.run(seqs, lambda free: self._admit(batch[0].group, free, batch))
        except Exception as e:   # a failure of the whole batch (the model's forward pass)
            for r in batch:
                r.fail(e)
            generated = 0
        finally:
            self.running = 0
            if self.metrics is not None:
                self.metrics.running.set(0)
        wall = time.perf_counter() - t0
        if self.metrics is not None and generated and wall > 0:
            self.metrics.batch_throughput.set(generated / wall)
