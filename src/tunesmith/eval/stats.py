"""Confidence intervals for the systems table: a paired, seeded bootstrap over test items (numpy).

Every metric of the table is rebuilt from per-item *sufficient statistics* (correct or not, a
ROUGE score, the label an answer names, BLEU n-gram counts), so a bootstrap resample is just a
vector of weights (how often each test item is drawn) and a metric on a resample is a weighted
sum. All systems share the same resamples, which makes differences between systems *paired*:
the interval of "tuned minus base" reflects how the two systems differ on the same items, not
how hard the items happened to be. Intervals are percentile intervals.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import metrics

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
METHOD = "paired percentile bootstrap over test items"
MAJORITY = "majority"
"""System key of the majority-class row (always the most common training label)."""

_FRACTIONS = frozenset({"accuracy", "exact_match", "macro_precision", "macro_recall", "macro_f1"})
_MACRO = {"macro_precision": "precision", "macro_recall": "recall", "macro_f1": "f1"}


def is_fraction(key: str) -> bool:
    """Whether a metric is a share in 0..1 (shown as % and compared in points), not a 0..100 score."""
    return key.rsplit("/", 1)[-1] in _FRACTIONS


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(resamples, n)`` counts: how often each of ``n`` test items is drawn in each resample.

    Deterministic for a given ``(n, resamples, seed)``, so systems scored on the same items get
    the same resamples (paired differences).
    """
    if n < 1:
        raise ValueError("a bootstrap needs at least one item")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    flat = (draws + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


@dataclass
class ItemStat:
    """Per-item statistics of one metric; :meth:`values` gives the metric for each weight vector.

    ``kind`` is ``mean`` (``data``: one score per item), ``macro`` (``data``: one-hot reference
    label, one-hot answered label; ``part``: precision/recall/f1) or ``bleu`` (``data``: the
    n-gram matches, n-gram totals, hypothesis and reference length of each item).
    """
    kind: str
    data: np.ndarray
    part: str = ""

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    def values(self, weights: np.ndarray) -> np.ndarray:
        weights = np.atleast_2d(weights)
        if self.kind == "mean":
            return weights @ self.data / weights.sum(axis=1)
        sums = weights @ self.data
        if self.kind == "macro":
            labels = self.data.shape[1] // 2
            gold, guess = sums[:, :labels], sums[:, labels:2 * labels]
            hits = weights @ (self.data[:, :labels] * self.data[:, labels:2 * labels])
            with np.errstate(divide="ignore", invalid="ignore"):
                if self.part == "precision":
                    per = np.where(guess > 0, hits / guess, 0.0)
                elif self.part == "recall":
                    per = np.where(gold > 0, hits / gold, 0.0)
                else:
                    per = np.where(gold + guess > 0, 2 * hits / (gold + guess), 0.0)
            return per.mean(axis=1)
        from sacrebleu.metrics import BLEU
        counts = np.rint(sums).astype(np.int64).tolist()     # weights are whole numbers of draws
        return np.array([BLEU.compute_bleu(row[0:4], row[4:8], row[8], row[9], smooth_method="exp").score
                         for row in counts])

    def point(self) -> float:
        return float(self.values(np.ones(self.n))[0])


def _rouge_items(key: str, preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    from rouge_score.rouge_scorer import RougeScorer
    scorer = RougeScorer([key], use_stemmer=True)     # as metrics.rouge: F-measure x 100, Porter stemming
    return np.array([100.0 * scorer.score(r, p)[key].fmeasure for p, r in zip(preds, refs)])


def _bleu_items(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    from sacrebleu.metrics import BLEU
    bleu = BLEU(effective_order=True)                 # counts only; the score is computed on the sums
    rows = []
    for p, r in zip(preds, refs):
        s = bleu.sentence_score(p, [r])
        rows.append([*s.counts, *s.totals, s.sys_len, s.ref_len])
    return np.array(rows, dtype=np.float64)


def item_stat(key: str, preds: Sequence[str], refs: Sequence[str],
              labels: Sequence[str] | None = None) -> ItemStat | None:
    """Per-item statistics for metric ``key`` (as :func:`metrics.compute` names it), or None when the
    metric cannot be rebuilt from single answers (e.g. references that name no label)."""
    name = key.rsplit("/", 1)[-1]
    if not preds or len(preds) != len(refs):
        return None
    if name == "exact_match":
        return ItemStat("mean", np.array([float(metrics.normalize(p) == metrics.normalize(r))
                                          for p, r in zip(preds, refs)]))
    if name in ("accuracy", *_MACRO):
        if not labels:
            return None
        gold = [metrics.parse_label(r, labels) for r in refs]
        if any(g is None for g in gold):
            return None
        guess = [metrics.parse_label(p, labels) for p in preds]
        if name == "accuracy":
            return ItemStat("mean", np.array([float(g == a) for g, a in zip(gold, guess)]))
        col = {label: j for j, label in enumerate(labels)}
        data = np.zeros((len(preds), 2 * len(labels)))
        for i, (g, a) in enumerate(zip(gold, guess)):
            data[i, col[g]] = 1.0
            if a is not None:                          # an unparsed answer counts for no label
                data[i, len(labels) + col[a]] = 1.0
        return ItemStat("macro", data, _MACRO[name])
    if name in ("rouge1", "rouge2", "rougeL"):
        return ItemStat("mean", _rouge_items(name, preds, refs))
    if name == "bleu":
        return ItemStat("bleu", _bleu_items(preds, refs))
    return None


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> list[float]:
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def interval(stat: ItemStat, weights: np.ndarray, level: float = LEVEL) -> list[float]:
    """The metric's ``level`` percentile interval over the resamples ``weights``."""
    return percentile_interval(stat.values(weights), level)


def paired_difference(first: ItemStat, second: ItemStat, weights: np.ndarray,
                      level: float = LEVEL) -> dict:
    """``second - first`` on the same items: the point difference and its paired interval."""
    if first.n != second.n:
        raise ValueError(f"paired systems need the same items ({first.n} vs {second.n})")
    diff = second.values(weights) - first.values(weights)
    return {"delta": second.point() - first.point(), "ci": percentile_interval(diff, level)}


# ---- what the answers look like ------------------------------------------------------------------

UNPARSED = metrics.UNPARSED


def answer_counts(preds: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    """How often each label was answered (labels order), plus answers naming no label."""
    found = Counter(metrics.parse_label(p, labels) for p in preds)
    out = {label: found.get(label, 0) for label in labels}
    out[UNPARSED] = found.get(None, 0)
    return out


def answer_key(pred: str, labels: Sequence[str] | None) -> str:
    """What counts as "the same answer": the label it names, else its normalised text."""
    if labels:
        label = metrics.parse_label(pred, labels)
        if label is not None:
            return label
    return metrics.normalize(pred)


def top_answer(preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None) -> dict | None:
    """The most frequent answer, its count and share, and how often the references give it."""
    if not preds:
        return None
    keys = [answer_key(p, labels) for p in preds]
    answer, count = Counter(keys).most_common(1)[0]
    ref_share = sum(answer_key(r, labels) == answer for r in refs) / len(refs) if refs else 0.0
    return {"answer": answer, "count": count, "share": count / len(preds), "reference_share": ref_share}


_WORD = re.compile(r"\w+|[^\w\s]")


def is_repetition_loop(text: str, min_tokens: int = 8, min_copies: int = 3, max_period: int = 12) -> bool:
    """Whether an answer runs into a loop: a span of 1..``max_period`` tokens repeated back to back
    at least ``min_copies`` times, covering at least ``min_tokens`` tokens (e.g. "no no no no no no
    no no", "I think so. I think so. I think so.")."""
    words = _WORD.findall(text.casefold())
    for period in range(1, min(max_period, len(words) // min_copies) + 1):
        run = 0
        for i in range(len(words) - period):
            run = run + 1 if words[i] == words[i + period] else 0
            if run + period >= max(min_tokens, min_copies * period):
                return True
    return False


def degenerate_counts(preds: Sequence[str]) -> dict[str, int]:
    """Empty answers and answers stuck in a repetition loop."""
    empty = sum(1 for p in preds if not metrics.normalize(p))
    loops = sum(1 for p in preds if metrics.normalize(p) and is_repetition_loop(p))
    return {"empty": empty, "repetition": loops, "total": len(preds)}


# ---- formatting ---------------------------------------------------------------------------------

def value_text(key: str, value: float) -> str:
    return f"{100 * value:.1f}%" if is_fraction(key) else f"{value:.2f}"


def gap_text(key: str, value: float, signed: bool = False) -> str:
    """A difference: points for 0..1 metrics, the metric's own units otherwise."""
    if is_fraction(key):
        return f"{100 * value:+.1f} points" if signed else f"{100 * abs(value):.1f} points"
    return f"{value:+.2f}" if signed else f"{abs(value):.2f}"


def interval_text(key: str, ci: Sequence[float] | None) -> str:
    """A difference's interval, e.g. ``+40.2 to +59.8``."""
    if not ci:
        return "no interval"
    if is_fraction(key):
        return f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}"
    return f"{ci[0]:+.2f} to {ci[1]:+.2f}"


def span_text(key: str, ci: Sequence[float] | None) -> str:
    """A metric's interval, e.g. ``62.1–73.4%``."""
    if not ci:
        return ""
    if is_fraction(key):
        return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%"
    return f"{ci[0]:.2f}–{ci[1]:.2f}"
