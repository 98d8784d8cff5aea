"""Side-by-side systems table (quality + cost) and the recommendation drawn from it."""
from __future__ import annotations

from ..config import Recipe
from . import metrics
from .baselines import SYSTEMS, flips

LOWER_IS_BETTER = ("loss", "perplexity")


def headline(recipe: Recipe, result: dict | None) -> str | None:
    """The metric key the decision is based on (first metric the task reports)."""
    names = recipe.metrics()
    if not names or not result or not result.get("metrics"):
        return None
    first = names[0]
    key = {"rouge": "rougeL", "rouge1": "rouge1", "rouge2": "rouge2"}.get(first, first)
    return key if key in result["metrics"] else next(iter(result["metrics"]))


def _subset_metrics(result: dict, recipe: Recipe, labels, n: int) -> dict:
    preds = result.get("predictions") or []
    if len(preds) <= n:
        return dict(result.get("metrics") or {})
    p = preds[:n]
    return metrics.compute(recipe.metrics(), [x["prediction"] for x in p], [x["reference"] for x in p], labels)


def systems_table(results: dict[str, dict], recipe: Recipe, labels, training: dict | None) -> dict:
    """Rows for every evaluated system on the same first ``n`` held-out prompts.

    ``results`` maps a system key (base, few_shot, rag, tuned, tuned_rag) to its evaluation result.
    """
    present = {k: v for k, v in results.items() if v and v.get("predictions")}
    if not present:
        return {"rows": [], "n": 0}
    n = min(len(v["predictions"]) for v in present.values())
    training = training or {}
    rows = []
    for key in SYSTEMS:
        res = present.get(key)
        if res is None:
            continue
        gen = res.get("generation") or {}
        tuned = key.startswith("tuned")
        rows.append({
            "system": key, "label": SYSTEMS[key], "metrics": _subset_metrics(res, recipe, labels, n),
            "prompt_tokens": gen.get("prompt_tokens"), "latency_s": gen.get("per_example_s"),
            "training_s": training.get("wall_s") if tuned else 0.0,
            "trainable_parameters": training.get("trainable_parameters") if tuned else 0,
        })
    base = present.get("base")
    for row in rows:
        if base is not None and row["system"] != "base":
            row["flips_vs_base"] = flips({"predictions": base["predictions"][:n]},
                                         {"predictions": present[row["system"]]["predictions"][:n]})
    tuned = present.get("tuned")
    for row in rows:
        if tuned is not None and row["system"] in ("few_shot", "rag"):
            row["flips_tuned_vs_this"] = flips({"predictions": present[row["system"]]["predictions"][:n]},
                                               {"predictions": tuned["predictions"][:n]})
    return {"rows": rows, "n": n, "headline": headline(recipe, tuned or base)}


def _score(row: dict, key: str) -> float | None:
    value = row["metrics"].get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _pct(key: str, value: float) -> str:
    return f"{100 * value:.1f}%" if key in ("accuracy", "exact_match") or key.startswith("macro_") else f"{value:.2f}"


def _gap(key: str, value: float) -> str:
    if key in ("accuracy", "exact_match") or key.startswith("macro_"):
        return f"{100 * value:.1f} points"
    return f"{value:.2f}"


def recommend(table: dict, forgetting: dict | None = None, margin: float | None = None) -> dict | None:
    """Whether the fine-tuned model is worth deploying over the cheap alternatives, and why.

    ``margin`` is the smallest gain that counts (default: 2 points on 0..1 metrics, 2 on 0..100).
    """
    rows = {r["system"]: r for r in table.get("rows", [])}
    key = table.get("headline")
    if not key or "tuned" not in rows:
        return None
    tuned = _score(rows["tuned"], key)
    cheap = [(s, _score(rows[s], key)) for s in ("base", "few_shot", "rag") if s in rows]
    cheap = [(s, v) for s, v in cheap if v is not None]
    if tuned is None or not cheap:
        return None
    best, best_value = max(cheap, key=lambda x: x[1])
    scale = 1.0 if key in ("accuracy", "exact_match") or key.startswith("macro_") else 100.0
    margin = margin if margin is not None else 0.02 * scale
    gain = tuned - best_value
    t_row, b_row = rows["tuned"], rows[best]
    facts = [f"{key} on {table['n']} held-out prompts: fine-tuned {_pct(key, tuned)}, best cheap alternative "
             f"({SYSTEMS[best]}) {_pct(key, best_value)}"]
    if t_row.get("prompt_tokens") and b_row.get("prompt_tokens"):
        facts.append(f"prompt tokens per request: {t_row['prompt_tokens']:.0f} vs {b_row['prompt_tokens']:.0f}")
    if t_row.get("latency_s") and b_row.get("latency_s"):
        facts.append(f"latency per request: {1000 * t_row['latency_s']:.0f} ms vs {1000 * b_row['latency_s']:.0f} ms")
    if t_row.get("training_s"):
        facts.append(f"one-off training cost: {t_row['training_s'] / 60:.1f} min")
    forgot = bool(forgetting and forgetting.get("flagged"))
    if forgot:
        facts += forgetting.get("reasons", [])
    if "tuned_rag" in rows and (_score(rows["tuned_rag"], key) or 0) > tuned + margin:
        verdict, choice = "fine-tune + RAG", "tuned_rag"
        text = "Deploy the fine-tuned model with retrieval: it beats the fine-tuned model alone."
    elif gain > margin:
        verdict, choice = "fine-tune", "tuned"
        text = (f"Fine-tuning is worth it: +{_gap(key, gain)} over {SYSTEMS[best]}."
                + (" Watch forgetting: consider forgetting.replay." if forgot else ""))
    elif gain >= -margin:
        verdict, choice = best, best
        text = (f"Fine-tuning is not clearly better ({'+' if gain >= 0 else ''}{_gap(key, gain)} vs "
                f"{SYSTEMS[best]}); the cheaper {SYSTEMS[best]} is the better deal unless its prompt cost "
                "or latency matters more.")
    else:
        verdict, choice = best, best
        text = f"Do not deploy the fine-tuned model: {SYSTEMS[best]} is better by {_gap(key, -gain)}."
    return {"verdict": verdict, "choice": choice, "metric": key, "gain_over_best_alternative": gain,
            "best_alternative": best, "text": text, "facts": facts, "forgetting_flagged": forgot}
