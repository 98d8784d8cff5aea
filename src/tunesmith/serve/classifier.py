"""Serving a classification-head run: every chat turn is answered with one of the head's labels, in one forward pass."""
from __future__ import annotations

import time

import torch

from .sampling import GREEDY_BELOW, TokenLogprob
from .schema import bad_request
from .tokens import TokenText


class ClassifierRunner:
    """Answers a batch with a label head (``objective.name: classification``).

    One forward pass reads every row's prompt; a row's reply is then its label's text followed by the end of
    turn: the most probable label, or one drawn from the head's distribution (divided by the row's temperature,
    with its own seeded generator) when the request samples. ``guided_choice`` narrows the labels to those it
    names. With ``logprobs`` the reply's first token carries the label's log-probability under the head and its
    ``top_logprobs`` are the most probable labels (label text in place of token text); a label's later tokens
    carry 0. ``logit_bias`` and the penalties have no tokens to act on, and ``top_p`` does not cut the labels:
    all three are ignored."""

    def __init__(self, model, objective, decoder: TokenText, eos_ids: list[int], pad_id: int,
                 max_rows: int | None = None):
        self.model, self.objective, self.decoder = model, objective, decoder
        self.eos, self.pad_id, self.max_rows = int(eos_ids[0]), pad_id, max_rows or 16
        self.labels: list[str] = list(objective.labels)
        self._tokens = [decoder.encode(label) for label in self.labels]

    def run(self, seqs, admit=None) -> int:
        """Answer ``seqs``; ``admit`` (joining a running batch) does not apply: a batch is one forward pass."""
        generated = 0
        live = []
        for s in seqs:
            if s.request.cancelled:
                s.abort()
            else:
                live.append(s)
        for start in range(0, len(live), self.max_rows):
            rows = live[start:start + self.max_rows]
            logp = self.objective.label_logprobs(self.model, [s.prompt_ids for s in rows], self.pad_id)
            now = time.perf_counter()
            for s, row in zip(rows, logp):
                if s.request.first_token_at is None:
                    s.request.first_token_at = now
                try:
                    label = self._pick(s, row)
                except Exception as e:        # this row's own failure ends its request, not the batch
                    s.request.fail(e)
                    s.abort()
                    continue
                generated += self._answer(s, label, row)
        return generated

    def _pick(self, s, row: torch.Tensor) -> int:
        allowed = list(range(len(self.labels)))
        if s.params.choices:
            named = {self.decoder.decode(list(c[:-1])) for c in s.params.choices}
            allowed = [i for i in allowed if self.labels[i] in named]
            if not allowed:
                raise bad_request(f"none of the choices is one of this classifier's labels "
                                  f"({', '.join(self.labels)})", param="guided_choice")
        scores = row[allowed]
        if s.params.temperature < GREEDY_BELOW:
            return allowed[int(scores.argmax())]
        probs = torch.softmax(scores / s.params.temperature, dim=-1)
        return allowed[int(torch.multinomial(probs, 1, generator=s.rng()))]

    def _answer(self, s, label: int, row: torch.Tensor) -> int:
        """Feed the label's tokens and the end of turn to the row; the number of tokens it took."""
        n = 0
        for k, tok in enumerate(self._tokens[label]):
            entry = None
            if s.params.logprobs:
                text, data = self.decoder.piece(tok)
                top = []
                if k == 0 and s.params.top_logprobs:
                    best = row.topk(min(s.params.top_logprobs, len(self.labels)))
                    top = [(self.labels[i], float(v), list(self.labels[i].encode()))
                           for v, i in zip(best.values.tolist(), best.indices.tolist())]
                entry = TokenLogprob(text, float(row[label]) if k == 0 else 0.0, data, 0, top)
            n += 1
            if s.accept(tok, False, self.decoder, entry):
                return n
        s.accept(self.eos, True, self.decoder, None)
        return n + 1


__all__ = ["ClassifierRunner"]
