"""Generation metrics: exact match, label accuracy/F1, ROUGE and BLEU via the field's libraries."""
from __future__ import annotations

import re
import string
from collections.abc import Sequence

UNPARSED = "unparsed"
"""Name of the extra confusion-matrix column counting answers that name no label."""

METRIC_NAMES = ("exact_match", "accuracy", "rouge", "bleu")
"""Metric names a recipe may ask for (``rouge`` expands to rouge1/rouge2/rougeL)."""

LOWER_IS_BETTER = frozenset({"val_loss", "perplexity"})
"""Headline numbers where a decrease is an improvement (every other one: higher is better)."""

_TRAILING_PUNCT = string.punctuation + "。！？、…"
_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Strip, casefold, collapse whitespace and drop trailing punctuation."""
    text = _WS.sub(" ", text.strip().casefold())
    return text.rstrip(_TRAILING_PUNCT).rstrip()


def _check_lengths(preds: Sequence[str], refs: Sequence[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions for {len(refs)} references")


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Fraction (0..1) of predictions equal to their reference after :func:`normalize`."""
    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    return sum(normalize(p) == normalize(r) for p, r in zip(preds, refs)) / len(preds)


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label an answer gives, or None.

    An exact (normalised) match wins; otherwise the label that occurs first in the text as a
    whole word, case-insensitively (ties at the same position go to the longer label).
    """
    norm = normalize(text)
    for label in labels:
        if normalize(label) == norm:
            return label
    best: tuple[int, int, str] | None = None
    for label in labels:
        needle = normalize(label)
        if not needle:
            continue
        m = re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", norm)
        if m is None:
            continue
        key = (m.start(), -len(needle), label)
        if best is None or key[:2] < best[:2]:
            best = key
    return best[2] if best else None


def _reference_labels(refs: Sequence[str], labels: Sequence[str]) -> list[str]:
    out = []
    for i, ref in enumerate(refs):
        label = next((lb for lb in labels if normalize(lb) == normalize(ref)), None)
        if label is None:
            raise ValueError(f"reference {i + 1} ({ref!r}) is not one of the labels {list(labels)}")
        out.append(label)
    return out


def label_metrics(preds: Sequence[str], refs: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, macro P/R/F1, per-label scores and a confusion matrix for a label task.

    Predictions naming no label count as wrong and are tallied under ``"unparsed"``.
    Returns ``{"accuracy", "macro_precision", "macro_recall", "macro_f1", "unparsed",
    "labels", "per_label": {label: {"precision", "recall", "f1", "support"}},
    "confusion": [[int]]}`` where confusion rows are references in ``labels`` order and
    columns are predictions in ``labels`` order plus a final ``"unparsed"`` column.
    """
    from sklearn.metrics import precision_recall_fscore_support

    _check_lengths(preds, refs)
    labels = list(labels)
    if not labels:
        raise ValueError("label metrics need at least one label")
    gold = _reference_labels(refs, labels)
    parsed = [parse_label(p, labels) for p in preds]
    # A sentinel outside ``labels``: sklearn then counts it as a miss for the reference label
    # and as a prediction for no label.
    sentinel = "\0" + UNPARSED
    guessed = [p if p is not None else sentinel for p in parsed]

    col = {label: j for j, label in enumerate(labels)}
    confusion = [[0] * (len(labels) + 1) for _ in labels]
    for g, p in zip(gold, parsed):
        confusion[col[g]][col[p] if p is not None else len(labels)] += 1

    n = len(gold)
    result = {
        "accuracy": sum(g == p for g, p in zip(gold, parsed)) / n if n else 0.0,
        "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0,
        "unparsed": parsed.count(None),
        "labels": labels,
        "per_label": {label: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
                      for label in labels},
        "confusion": confusion,
    }
    if n:
        mp, mr, mf, _ = precision_recall_fscore_support(
            gold, guessed, labels=labels, average="macro", zero_division=0)
        p, r, f, s = precision_recall_fscore_support(
            gold, guessed, labels=labels, average=None, zero_division=0)
        result.update(macro_precision=float(mp), macro_recall=float(mr), macro_f1=float(mf))
        result["per_label"] = {
            label: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                    "support": int(s[j])}
            for j, label in enumerate(labels)}
    return result


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (×100, Porter stemming) over prediction/reference pairs."""
    from rouge_score.rouge_scorer import RougeScorer

    _check_lengths(preds, refs)
    keys = ("rouge1", "rouge2", "rougeL")
    if not preds:
        return dict.fromkeys(keys, 0.0)
    scorer = RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(preds, refs):
        scores = scorer.score(ref, pred)  # score(target, prediction)
        for k in keys:
            totals[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(preds) for k, v in totals.items()}


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults, 0..100) with one reference per prediction."""
    import sacrebleu

    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score)


def _expand(metric_names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in metric_names:
        if name in ("rouge1", "rouge2", "rougeL"):
            name = "rouge"
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
        if name not in out:
            out.append(name)
    return out


def compute(metric_names: Sequence[str], preds: Sequence[str], refs: Sequence[str],
            labels: Sequence[str] | None = None) -> dict[str, float]:
    """Headline numbers for the requested metrics, flattened into one dict.

    Keys (only for metrics asked for): ``exact_match`` (0..1); ``accuracy`` (0..1) plus
    ``macro_precision``, ``macro_recall``, ``macro_f1`` (needs ``labels``); ``rouge1``,
    ``rouge2``, ``rougeL`` (0..100); ``bleu`` (0..100).
    """
    out: dict[str, float] = {}
    for name in _expand(metric_names):
        if name == "exact_match":
            out["exact_match"] = exact_match(preds, refs)
        elif name == "accuracy":
            if not labels:
                raise ValueError("the accuracy metric needs the task's labels")
            lm = label_metrics(preds, refs, labels)
            for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
                out[k] = lm[k]
        elif name == "rouge":
            out.update(rouge(preds, refs))
        elif name == "bleu":
            out["bleu"] = bleu(preds, refs)
    return out


def details(preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None) -> dict | None:
    """Per-label scores and the confusion matrix for the report (None without labels)."""
    return label_metrics(preds, refs, labels) if labels else None


def per_example_correct(metric: str, pred: str, ref: str, labels: Sequence[str] | None = None) -> bool:
    """Whether one answer is right: label match when ``labels`` are given, else exact match.

    ``metric`` is the task's headline metric; ``accuracy`` without labels is an error.
    """
    if labels:
        guess = parse_label(pred, labels)
        return guess is not None and guess == parse_label(ref, labels)
    if metric == "accuracy":
        raise ValueError("the accuracy metric needs the task's labels")
    return normalize(pred) == normalize(ref)


def per_example_scores(metric: str, preds: Sequence[str], refs: Sequence[str],
                       labels: Sequence[str] | None = None) -> list[float]:
    """One score per answer on the scale of :func:`compute`'s ``metric`` (``accuracy``/``exact_match``: 0 or
    1; ``rouge1``/``rouge2``/``rougeL``: F-measure ×100; ``bleu``: sentence BLEU), for paired comparisons."""
    _check_lengths(preds, refs)
    if metric in ("accuracy", "exact_match"):
        return [float(per_example_correct(metric, p, r, labels if metric == "accuracy" else None))
                for p, r in zip(preds, refs)]
    if metric in ("rouge1", "rouge2", "rougeL"):
        from rouge_score.rouge_scorer import RougeScorer
        scorer = RougeScorer([metric], use_stemmer=True)
        return [100.0 * scorer.score(r, p)[metric].fmeasure for p, r in zip(preds, refs)]
    if metric == "bleu":
        import sacrebleu
        return [float(sacrebleu.sentence_bleu(p, [r]).score) for p, r in zip(preds, refs)]
    raise ValueError(f"no per-example score for metric {metric!r}")


def calibration(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> dict:
    """How well the top label's probability matches how often it is right: the reliability curve (uniform
    bins, scikit-learn's ``calibration_curve``), the expected calibration error and the mean confidence."""
    import numpy as np
    from sklearn.calibration import calibration_curve
    conf = np.asarray(confidence, dtype=float)
    right = np.asarray(correct, dtype=bool)
    if len(conf) == 0:
        return {"n": 0}
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
              for b in range(bins) if (which == b).any())
    out = {"n": int(len(conf)), "ece": float(ece), "mean_confidence": float(conf.mean()),
           "accuracy": float(right.mean()), "bins": bins}
    if right.any() and not right.all():
        observed, predicted = calibration_curve(right, conf, n_bins=bins, strategy="uniform")
        out["curve"] = [[round(float(p), 4), round(float(o), 4)] for p, o in zip(predicted, observed)]
    else:       # one class only: the curve is the accuracy at the mean confidence
        out["curve"] = [[round(float(conf.mean()), 4), float(right.mean())]]
    return out
