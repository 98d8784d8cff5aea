"""Side-by-side systems table (quality with 95% intervals + cost) and the recommendation drawn from it.

The table adds a majority-class row for label tasks (always answering the most common training
label), the answers each system gives, degenerate outputs for ROUGE/BLEU tasks, and paired
bootstrap intervals (:mod:`.stats`) on every metric and on the differences with the fine-tuned
model. The recommendation follows the interval of "fine-tuned minus the best alternative", never
a fixed margin, and a collapsed fine-tuned model is flagged and never recommended.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..config import Recipe
from . import metrics, stats
from .baselines import SYSTEMS, flips
from .stats import gap_text, interval_text, span_text, value_text

LOWER_IS_BETTER = ("loss", "perplexity")
MAJORITY = stats.MAJORITY
ALTERNATIVES = ("base", "few_shot", "rag")
COLLAPSE_SHARE = 0.9
"""A system collapsed when one answer covers more than this share of the items (and more than the
references give it), or when its accuracy is not above the majority-class row."""
DEGENERATE_RED = 0.1
"""Share of empty or looping answers from which a fine-tuned model's degenerate output is a red flag."""
SMALL_N = 30


def headline(recipe: Recipe, result: dict | None) -> str | None:
    """The metric key the decision is based on (first metric the task reports)."""
    names = recipe.metrics()
    if not names or not result or not result.get("metrics"):
        return None
    first = names[0]
    key = {"rouge": "rougeL", "rouge1": "rouge1", "rouge2": "rouge2"}.get(first, first)
    return key if key in result["metrics"] else next(iter(result["metrics"]))


def label(system: str) -> str:
    return "majority class" if system == MAJORITY else SYSTEMS.get(system, system)


def _subset_metrics(result: dict, recipe: Recipe, labels, n: int) -> dict:
    preds = result.get("predictions") or []
    if len(preds) <= n:
        return dict(result.get("metrics") or {})
    p = preds[:n]
    return metrics.compute(recipe.metrics(), [x["prediction"] for x in p], [x["reference"] for x in p], labels)


def majority_label(labels: Sequence[str], references: Sequence[str]) -> str | None:
    """The most common label among ``references`` (ties: the first in ``labels`` order)."""
    counts = Counter(metrics.parse_label(r, labels) for r in references)
    counts.pop(None, None)
    return max(labels, key=lambda lb: counts.get(lb, 0)) if counts else None


def _items(preds: list[dict], key: str) -> list[dict]:
    """The predictions a metric is computed on (``task/metric`` keys: that task's items)."""
    task, _, _ = key.rpartition("/")
    return [p for p in preds if p.get("task") == task] if task else preds


class _Intervals:
    """Per-item statistics and intervals, sharing one set of bootstrap resamples per item count."""

    def __init__(self, labels, resamples: int, seed: int):
        self.labels, self.resamples, self.seed = labels, resamples, seed
        self._weights: dict[int, object] = {}
        self._stats: dict[tuple[str, str], stats.ItemStat | None] = {}

    def weights(self, n: int):
        if n not in self._weights:
            self._weights[n] = stats.resample_weights(n, self.resamples, self.seed)
        return self._weights[n]

    def stat(self, system: str, key: str, preds: list[dict]) -> stats.ItemStat | None:
        if (system, key) not in self._stats:
            items = _items(preds, key)
            try:
                self._stats[system, key] = stats.item_stat(key, [str(p["prediction"]) for p in items],
                                                           [str(p["reference"]) for p in items], self.labels)
            except (ValueError, KeyError, TypeError):
                self._stats[system, key] = None
            if self._stats[system, key] is None and key.rsplit("/", 1)[-1] == "accuracy" and items and \
                    all(isinstance(p.get("correct"), bool) for p in items):
                # multi-task rows: each task's labels judged the answer when it was evaluated
                self._stats[system, key] = stats.ItemStat("mean", np.array([float(p["correct"]) for p in items]))
        return self._stats[system, key]

    def interval(self, system: str, key: str, preds: list[dict]) -> list[float] | None:
        s = self.stat(system, key, preds)
        return stats.interval(s, self.weights(s.n)) if s is not None else None

    def difference(self, first: tuple[str, list], second: tuple[str, list], key: str) -> dict | None:
        a, b = self.stat(first[0], key, first[1]), self.stat(second[0], key, second[1])
        if a is None or b is None or a.n != b.n:
            return None
        return {"from": first[0], "to": second[0], "metric": key, "from_label": label(first[0]),
                "to_label": label(second[0]), **stats.paired_difference(a, b, self.weights(a.n))}


def _collapse(row: dict, n: int, majority: dict | None) -> str | None:
    """Why a system's answers look collapsed, or None."""
    reasons = []
    top = row.get("top_answer")
    if top and top["share"] > COLLAPSE_SHARE and top["share"] > top["reference_share"]:
        reasons.append(f"answers {top['answer']!r} for {top['count']} of {n} items ({100 * top['share']:.0f}%; "
                       f"the references give that answer for {100 * top['reference_share']:.0f}%)")
    acc, floor = row["metrics"].get("accuracy"), (majority or {}).get("metrics", {}).get("accuracy")
    if isinstance(acc, (int, float)) and isinstance(floor, (int, float)) and acc <= floor:
        reasons.append(f"scores {100 * acc:.1f}% accuracy, not above always answering {majority['answer']!r} "
                       f"({100 * floor:.1f}%)")
    return " and ".join(reasons) or None


def systems_table(results: dict[str, dict], recipe: Recipe, labels, training: dict | None, *,
                  train_references: Sequence[str] | None = None, resamples: int = stats.RESAMPLES,
                  seed: int = stats.SEED) -> dict:
    """Rows for every evaluated system on the same first ``n`` held-out prompts, with intervals.

    ``results`` maps a system key (base, few_shot, rag, tuned, tuned_rag) to its evaluation result.
    ``train_references``: the training answers, for the majority-class row of a label task (without
    them the most common test answer stands in, which can only make that row stronger).
    """
    present = {k: v for k, v in results.items() if v and v.get("predictions")}
    if not present:
        return {"rows": [], "n": 0}
    n = min(len(v["predictions"]) for v in present.values())
    training = training or {}
    preds = {k: v["predictions"][:n] for k, v in present.items()}
    first = next(k for k in [*SYSTEMS, *present] if k in present)
    refs = [str(p["reference"]) for p in preds[first]]
    key = headline(recipe, present.get("tuned") or present.get("base"))
    label_task = bool(labels) and not any("/" in k for k in present[first].get("metrics") or {}) and \
        all(metrics.parse_label(r, labels) is not None for r in refs)
    generative = any(m in ("rouge", "rouge1", "rouge2", "rougeL", "bleu") for m in recipe.metrics())
    ci = _Intervals(labels if label_task else None, resamples, seed)

    rows: list[dict] = []
    majority = None
    if label_task:
        source = "training" if train_references else "test"
        answer = majority_label(labels, train_references or refs)
        if answer is not None:
            preds[MAJORITY] = [{"prediction": answer, "reference": r} for r in refs]
            majority = {"system": MAJORITY, "label": f"majority class (always {answer!r})", "answer": answer,
                        "source": source,
                        "metrics": metrics.compute(recipe.metrics(), [answer] * n, refs, labels),
                        "prompt_tokens": None, "latency_s": None, "training_s": 0.0, "trainable_parameters": 0}
            rows.append(majority)
    for system in SYSTEMS:
        res = present.get(system)
        if res is None:
            continue
        gen = res.get("generation") or {}
        tuned = system.startswith("tuned")
        rows.append({
            "system": system, "label": SYSTEMS[system], "metrics": _subset_metrics(res, recipe, labels, n),
            "prompt_tokens": gen.get("prompt_tokens"), "latency_s": gen.get("per_example_s"),
            "training_s": (training.get("stage_s") or training.get("wall_s")) if tuned else 0.0,   # the whole
            # stage (a head's probe, validations) where recorded, not only the optimizer steps
            "trainable_parameters": training.get("trainable_parameters") if tuned else 0,
        })
        safe = res.get("label_safe") or {}
        if label_task and system in ("base", "tuned") and len(safe.get("predictions") or []) >= n:
            key_safe = f"{system}_label_safe"           # the same system answering one of the labels
            preds[key_safe] = safe["predictions"][:n]
            rows.append({**rows[-1], "system": key_safe, "label": f"{SYSTEMS[system]}, label-safe decoding",
                         "metrics": _subset_metrics(safe, recipe, labels, n),
                         "latency_s": (safe.get("generation") or {}).get("per_example_s"),
                         "calibration": safe.get("calibration")})
    for row in rows:
        system, answers = row["system"], [str(p["prediction"]) for p in preds[row["system"]]]
        row["intervals"] = {k: ci.interval(system, k, preds[system]) for k in row["metrics"]}
        if label_task:
            row["answers"] = stats.answer_counts(answers, labels)
        if generative:
            row["degenerate"] = stats.degenerate_counts(answers)
        if system != MAJORITY:
            row["top_answer"] = stats.top_answer(answers, refs, labels if label_task else None)
            row["collapsed"] = _collapse(row, n, majority)
    base = present.get("base")
    for row in rows:
        if base is not None and row["system"] not in ("base", MAJORITY):
            row["flips_vs_base"] = flips({"predictions": base["predictions"][:n]}, {"predictions": preds[row["system"]]})
    tuned = present.get("tuned")
    for row in rows:
        if tuned is not None and row["system"] in ("few_shot", "rag"):
            row["flips_tuned_vs_this"] = flips({"predictions": present[row["system"]]["predictions"][:n]},
                                               {"predictions": tuned["predictions"][:n]})
    pairs = [(a, "tuned") for a in (MAJORITY, *ALTERNATIVES)] + [("tuned", "tuned_rag")]
    deltas = [d for a, b in pairs if key and a in preds and b in preds
              for d in [ci.difference((a, preds[a]), (b, preds[b]), key)] if d is not None]
    table = {"rows": rows, "n": n, "headline": key, "deltas": deltas,
             "reference_answers": stats.answer_counts(refs, labels) if label_task else None,
             "bootstrap": {"method": stats.METHOD, "level": stats.LEVEL, "resamples": resamples, "seed": seed}}
    table["flags"] = flags(table)
    return table


def flags(table: dict) -> list[dict]:
    """Red flags (and warnings) about the fine-tuned systems, for the top of the report."""
    out = []
    for row in table.get("rows", []):
        if not row["system"].startswith("tuned"):
            continue
        if row.get("collapsed"):
            out.append({"level": "red", "kind": "collapse", "system": row["system"],
                        "text": f"COLLAPSED MODEL: the {row['label']} model {row['collapsed']}. "
                                "Do not deploy it; see the answers column below."})
        d = row.get("degenerate")
        bad = (d or {}).get("empty", 0) + (d or {}).get("repetition", 0)
        if d and bad:
            level = "red" if bad >= DEGENERATE_RED * max(d["total"], 1) else "warning"
            out.append({"level": level, "kind": "degenerate", "system": row["system"],
                        "text": f"Degenerate output from the {row['label']} model: {d['empty']} empty answers and "
                                f"{d['repetition']} stuck in a repetition loop, of {d['total']}."})
    return out


# ---- the recommendation -------------------------------------------------------------------------

def _score(row: dict, key: str) -> float | None:
    value = row["metrics"].get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _delta(table: dict, first: str, second: str, key: str) -> dict | None:
    return next((d for d in table.get("deltas", []) if d["from"] == first and d["to"] == second
                 and d["metric"] == key), None)


def recommend(table: dict, forgetting: dict | None = None) -> dict | None:
    """Whether the fine-tuned model is worth deploying over the cheap alternatives, and why.

    Fine-tuning is recommended only when the 95% interval of "fine-tuned minus the best
    alternative" lies above 0 (and above always answering the majority label); when it contains
    0 the answer is "inconclusive", and a collapsed fine-tuned model is never recommended.
    """
    rows = {r["system"]: r for r in table.get("rows", [])}
    key = table.get("headline")
    if not key or "tuned" not in rows:
        return None
    tuned = _score(rows["tuned"], key)
    cheap = [(s, _score(rows[s], key)) for s in ALTERNATIVES if s in rows]
    cheap = [(s, v) for s, v in cheap if v is not None]
    if tuned is None or not cheap:
        return None
    n = table["n"]
    best, best_value = max(cheap, key=lambda x: x[1])
    t_row, b_row = rows["tuned"], rows[best]
    d = _delta(table, best, "tuned", key)
    gain, ci = (d["delta"], d["ci"]) if d else (tuned - best_value, None)

    def scored(row, value):
        span = span_text(key, (row.get("intervals") or {}).get(key))
        return value_text(key, value) + (f" (95% CI {span})" if span else "")

    facts = [f"{key} on {n} held-out prompts: fine-tuned {scored(t_row, tuned)}, best cheap alternative "
             f"({label(best)}) {scored(b_row, best_value)}"]
    if d:
        facts.append(f"fine-tuned minus {label(best)}: {gap_text(key, gain, True)} "
                     f"(95% CI {interval_text(key, ci)}; {stats.METHOD}, {table.get('bootstrap', {}).get('resamples')} "
                     "resamples)")
    floor = rows.get(MAJORITY)
    over_floor = _delta(table, MAJORITY, "tuned", key) if floor else None
    if floor and _score(floor, key) is not None:
        facts.append(f"always answering {floor['answer']!r} (the most common {floor['source']} label) scores "
                     f"{value_text(key, _score(floor, key))}")
    if n < SMALL_N:
        facts.append(f"only {n} test items: the intervals are wide; evaluate more items for a firmer answer")
    if t_row.get("prompt_tokens") and b_row.get("prompt_tokens"):
        facts.append(f"prompt tokens per request: {t_row['prompt_tokens']:.0f} vs {b_row['prompt_tokens']:.0f}")
    if t_row.get("latency_s") and b_row.get("latency_s"):
        facts.append(f"latency per request: {1000 * t_row['latency_s']:.0f} ms vs {1000 * b_row['latency_s']:.0f} ms")
    if t_row.get("training_s"):
        facts.append(f"one-off training cost: {t_row['training_s'] / 60:.1f} min")
    forgot = bool(forgetting and forgetting.get("flagged"))
    if forgot:
        facts += forgetting.get("reasons", [])
    red = [f for f in table.get("flags", []) if f["level"] == "red"]
    facts += [f["text"] for f in table.get("flags", []) if f["level"] != "red"]

    verdict, choice = best, best
    if t_row.get("collapsed"):
        decision = "collapsed"
        text = (f"Do not deploy the fine-tuned model, it collapsed: it {t_row['collapsed']}. "
                f"The best alternative, {label(best)}, scores {value_text(key, best_value)}.")
    elif ci is None:
        decision = "inconclusive"
        text = (f"Inconclusive: no per-item scores for {key}, so no confidence interval; fine-tuned "
                f"{value_text(key, tuned)} vs {label(best)} {value_text(key, best_value)} on {n} items.")
    elif ci[0] > 0 and over_floor is not None and over_floor["ci"][0] <= 0:
        decision = "inconclusive"
        text = (f"Inconclusive on {n} held-out items: fine-tuned beats {label(best)} but not clearly the majority "
                f"class (fine-tuned minus always {floor['answer']!r}: {gap_text(key, over_floor['delta'], True)}, "
                f"95% CI {interval_text(key, over_floor['ci'])}).")
    elif ci[0] > 0:
        decision, verdict, choice = "fine-tune", "fine-tune", "tuned"
        text = (f"Fine-tuning is worth it: {gap_text(key, gain, True)} over {label(best)} "
                f"(95% CI {interval_text(key, ci)} on {n} held-out items)."
                + (f" Watch forgetting: {_replay_advice(forgetting)}." if forgot else ""))
        plus_rag = _delta(table, "tuned", "tuned_rag", key)
        if plus_rag and plus_rag["ci"][0] > 0 and not (rows.get("tuned_rag") or {}).get("collapsed"):
            verdict, choice = "fine-tune + RAG", "tuned_rag"
            text += (f" Deploy it with retrieval: fine-tuned + RAG adds {gap_text(key, plus_rag['delta'], True)} "
                     f"(95% CI {interval_text(key, plus_rag['ci'])}).")
    elif ci[1] < 0:
        decision = "alternative"
        text = (f"Do not deploy the fine-tuned model: {label(best)} is better by {gap_text(key, gain)} "
                f"(95% CI of fine-tuned minus it {interval_text(key, ci)} on {n} held-out items).")
    else:
        decision = "inconclusive"
        text = (f"Inconclusive on {n} held-out items: fine-tuned minus {label(best)} is {gap_text(key, gain, True)} "
                f"(95% CI {interval_text(key, ci)}), which includes no difference; the cheaper {label(best)} is "
                "the safer choice unless a larger test set shows a gain.")
    if decision == "fine-tune" and red:      # a red flag (e.g. degenerate output) always travels with a yes
        text += " But see the red flags: " + " ".join(f["text"] for f in red)
    return {"verdict": verdict, "choice": choice, "decision": decision, "metric": key, "n": n,
            "gain_over_best_alternative": gain, "interval": ci, "best_alternative": best, "text": text,
            "facts": facts, "flags": table.get("flags", []), "collapsed": bool(t_row.get("collapsed")),
            "forgetting_flagged": forgot}


def _replay_advice(forgetting: dict) -> str:
    """What to change when forgetting was flagged, given the replay share the run used."""
    share = (forgetting.get("replay") or {}).get("share") or 0
    if share:
        return (f"this run replayed {share:.0%} general text; a larger forgetting.replay, a lower train.lr or "
                "fewer steps forget less")
    return "forgetting.replay (e.g. 0.2) mixes general text into training to hold it"
