"""What a generation request asks (validated sampling parameters), the events it receives, and the
decoding state of each of its choices (stop strings, held-back text, logprobs)."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass, field

import torch

from .tokens import TokenText

# ---- requests and events --------------------------------------------------------------------------

SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)        # OpenAI's seed is an int64; choice j uses seed + j (mod 2**64)
MAX_LOGIT_BIAS = 1024                         # entries in one request's logit_bias
MAX_STOPS, MAX_STOP_CHARS = 4, 1024
MAX_TOP_LOGPROBS = 20
GREEDY_BELOW = 1e-5      # temperatures below this decode greedily (sampling's limit as T -> 0; avoids inf/NaN)


class InvalidParameter(ValueError):
    """A sampling parameter no decoder could honour; ``param`` is its OpenAI name."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _number(value, param: str, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise InvalidParameter(param, f"Invalid '{param}': expected a number from {low} "
                                      f"({'exclusive' if low_open else 'inclusive'}) to {high}, got {value!r}.")


@dataclass
class SamplingParams:
    """What one request asks of the decoder (OpenAI semantics); ``check`` validates every field."""

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
    choices: tuple[tuple[int, ...], ...] = ()    # label-safe: the reply is one of these token sequences

    def allowed(self, generated: Seq[int]) -> set[int]:
        """With ``choices``: the tokens that continue one of them after ``generated``."""
        k = len(generated)
        return {c[k] for c in self.choices if len(c) > k and list(c[:k]) == list(generated)}

    def check(self, vocab_size: int | None = None) -> None:
        """Raise InvalidParameter for any value that could fail (or poison) decoding: everything a
        request asks is checked here, before it can join a batch shared with other requests.
        ``vocab_size`` (when known) bounds the token ids of ``logit_bias``."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidParameter("max_tokens", f"Invalid 'max_tokens': expected an integer >= 1, got "
                                                 f"{self.max_tokens!r}.")
        _number(self.temperature, "temperature", 0, 2)
        _number(self.top_p, "top_p", 0, 1, low_open=True)
        _number(self.presence_penalty, "presence_penalty", -2, 2)
        _number(self.frequency_penalty, "frequency_penalty", -2, 2)
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
            raise InvalidParameter("seed", f"Invalid 'seed': expected an integer from {SEED_RANGE[0]} to "
                                           f"{SEED_RANGE[1]}, got {str(seed)[:40]}.")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidParameter("top_logprobs", f"Invalid 'top_logprobs': expected 0 to {MAX_TOP_LOGPROBS}.")
        if len(self.stop) > MAX_STOPS or any(not isinstance(x, str) or not x or len(x) > MAX_STOP_CHARS
                                             for x in self.stop):
            raise InvalidParameter("stop", f"Invalid 'stop': at most {MAX_STOPS} non-empty strings of at most "
                                           f"{MAX_STOP_CHARS} characters each.")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidParameter("logit_bias", f"Invalid 'logit_bias': at most {MAX_LOGIT_BIAS} entries, got "
                                                 f"{len(self.logit_bias)}.")
        if any(not c or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 or
                            (vocab_size is not None and t >= vocab_size) for t in c) for c in self.choices):
            raise InvalidParameter("guided_choice", "Invalid 'guided_choice': every choice must tokenise to ids "
                                                    "of the model's vocabulary.")
        for tok, bias in self.logit_bias.items():
            if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0 or \
                    (vocab_size is not None and tok >= vocab_size):
                top = f" from 0 to {vocab_size - 1}" if vocab_size is not None else " >= 0"
                raise InvalidParameter("logit_bias", f"Invalid 'logit_bias': token id {str(tok)[:40]} is not in "
                                                     f"the model's vocabulary (expected ids{top}).")
            _number(bias, "logit_bias", -100, 100)


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
        params.check()
        self.model_id = model_id
        self.group = model_id           # the engine's batching group (set when submitted)
        self.params = params
        self.emit = emit
        self.n = n
        self.cancelled = False
        self.failed = False
        self.enqueued_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.prompt_tokens = sum(len(p) for p in prompts)
        base_seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(6), "little")
        self.sequences = [GenSequence(self, p_i * n + j, list(prompt), (base_seed + j) % 2 ** 64)
                          for p_i, prompt in enumerate(prompts) for j in range(n)]

    def cancel(self) -> None:
        self.cancelled = True

    def fail(self, error: BaseException) -> None:
        """End this request with ``error`` (once); its sequences leave the batch, the others go on."""
        if self.failed:
            return
        self.failed = self.cancelled = True
        try:
            self.emit(Event("error", error=error))
        except Exception:        # a broken sink must not take the engine down
            pass


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
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- sampling state
    def rng(self) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        return self.generator

    def bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``logit_bias`` as (token ids, values) tensors, built once."""
        if self._bias is None:
            items = self.params.logit_bias
            self._bias = (torch.tensor(list(items), dtype=torch.long),
                          torch.tensor(list(items.values()), dtype=torch.float32))
        return self._bias

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
        """Take the next generated token; emit what is safe to show; return True when finished.

        An error here (decoding, stop handling, the sink) ends this sequence's request only."""
        try:
            return self._accept(token_id, is_eos, decoder, entry)
        except Exception as e:
            self.request.fail(e)
            self.abort()
            return True

    def _accept(self, token_id: int, is_eos: bool, decoder: TokenText, entry: TokenLogprob | None) -> bool:
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
