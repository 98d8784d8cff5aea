"""Token ids <-> text for the server: the engine's decoding (under one lock) and request handlers'
encoding (no shared lock; callers bound it with a character limit checked first)."""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence as Seq


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
    """Token ids <-> text for one tokenizer.

    Decoding (``decode``, ``piece``: the engine thread) holds ``lock``. Encoding (``encode``,
    ``render_chat``: request handlers) takes no shared lock, so tokenising a long prompt never stalls
    generation or another request's tokenisation: fast tokenizers release the GIL while encoding and
    only borrow the Rust tokenizer immutably once truncation and padding are off (switched off here:
    the only state an encode call would otherwise change). Callers bound the work with ``max_chars``.
    """

    def __init__(self, tokenizer, lock: threading.Lock | None = None):
        self.tokenizer = tokenizer
        self.lock = lock or threading.Lock()
        self._piece: dict[int, tuple[str, list[int]]] = {}
        self._longest: int | None = None
        backend = getattr(tokenizer, "_tokenizer", None)
        if getattr(backend, "truncation", None) is not None:
            backend.no_truncation()
        if getattr(backend, "padding", None) is not None:
            backend.no_padding()

    def fingerprint(self) -> str:
        """What decoding depends on (vocabulary, special tokens): equal for tokenizers that decode alike."""
        if getattr(self, "_fingerprint", None) is None:
            tok = self.tokenizer
            data = json.dumps([sorted(tok.get_vocab().items()), tok.all_special_ids, tok.all_special_tokens])
            self._fingerprint = hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]
        return self._fingerprint

    # -- encoding (any thread, no shared lock)
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def longest_token(self) -> int:
        """The most characters one token stands for: the longest stored token (one character per
        byte for byte-level BPE, so never fewer than the text it decodes to)."""
        if self._longest is None:
            self._longest = max((len(t) for t in self.tokenizer.get_vocab()), default=1) or 1
        return self._longest

    def max_chars(self, tokens: int) -> int:
        """Characters beyond which a text cannot fit in ``tokens`` tokens (x2 leaves room for
        normalisers that merge characters, e.g. NFC); checked before tokenising anything long."""
        return 2 * tokens * self.longest_token()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        try:
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        except RuntimeError as e:      # "Already borrowed": someone changed the tokenizer meanwhile
            if "borrow" not in str(e):
                raise
            with self.lock:
                return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def render_chat(self, messages: list[dict]) -> str:
        """The prompt text of ``messages`` by the model's chat template (generation prompt added)."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # -- decoding (the engine thread; under ``lock``)
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
