"""Evaluation stage: the same held-out prompts through a model -> loss, perplexity and task metrics."""
from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..config import Recipe
from ..data.example import Example
from ..data.tokenize import Tokenized
from ..train.loop import evaluate_loss
from ..train.progress import console
from . import metrics
from ..generation import generate, merged_for_inference, render_prompt


def evaluate_model(model, tokenizer, examples: list[Example], seqs: list[Tokenized], recipe: Recipe,
                   labels: list[str] | None, objective, *, title: str) -> dict:
    """Loss/perplexity on ``seqs`` and generation metrics on ``examples`` (greedy, batched)."""
    loss = evaluate_loss(model, seqs, objective, batch_size=recipe.train.batch_size,
                         pad_id=tokenizer.pad_token_id, device=next(model.parameters()).device) \
        if seqs else {}
    result: dict = {"loss": loss, "metrics": {}, "predictions": []}
    chat = [ex for ex in examples if ex.messages and ex.reference is not None]
    if not chat:
        return result
    prompts = [ex.prompt_messages for ex in chat]
    result.update(score_prompts(model, tokenizer, chat, prompts, recipe, labels, title=title))
    safe = label_safe(model, tokenizer, prompts, [ex.reference for ex in chat], recipe, labels, title=title)
    if safe:
        result["label_safe"] = safe
    return result


def score_prompts(model, tokenizer, examples: list[Example], prompts: list[list[dict]], recipe: Recipe,
                  labels: list[str] | None, *, title: str) -> dict:
    """Greedy answers to ``prompts`` (one per example, e.g. with few-shot or retrieved context) scored
    against the examples' references; with latency and prompt-token cost per request."""
    refs = [ex.reference for ex in examples]
    t0 = time.perf_counter()
    with Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task(title, total=len(prompts))
        with merged_for_inference(model):
            preds = generate(model, tokenizer, prompts, recipe.eval.max_new_tokens,
                             batch_size=recipe.eval.batch_size,
                             progress=lambda n: bar.update(task, completed=n))
    wall = time.perf_counter() - t0
    prompt_tokens = [len(tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"])
                     for p in prompts]
    headline = (recipe.metrics() or ["exact_match"])[0]
    return {
        "metrics": metrics.compute(recipe.metrics(), preds, refs, labels),
        "label_details": metrics.details(preds, refs, labels),
        "generation": {"wall_s": wall, "per_example_s": wall / len(prompts),
                       "prompt_tokens": sum(prompt_tokens) / len(prompt_tokens)},
        "predictions": [{"prompt": prompt, "reference": r, "prediction": p,
                         "correct": metrics.per_example_correct(headline, p, r, labels)}
                        for prompt, r, p in zip(prompts, refs, preds)],
    }


def label_safe(model, tokenizer, prompts: list[list[dict]], refs: list[str], recipe: Recipe, labels: list[str] | None,
               *, title: str) -> dict | None:
    """The same prompts answered with label-safe decoding (one of ``labels``, see constrained.py): metrics,
    per-example predictions with the top-2 label probabilities, and calibration; None when it does not apply
    (no label set, too many labels, turned off, or references that are not labels)."""
    from ..constrained import MAX_LABELS, choose_labels
    if not recipe.eval.label_safe or not labels or len(labels) > MAX_LABELS or not prompts \
            or any(metrics.parse_label(r, labels) is None for r in refs):
        return None
    t0 = time.perf_counter()
    with Progress(TextColumn(f"[bold]{title}, label-safe"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task(title, total=len(prompts))
        with merged_for_inference(model):
            try:
                choices = choose_labels(model, tokenizer, prompts, labels, batch_size=recipe.eval.batch_size,
                                        progress=lambda n: bar.update(task, completed=n))
            except ValueError as e:             # e.g. two labels that tokenise alike: say so, keep free generation
                return {"skipped": str(e)}
    wall = time.perf_counter() - t0
    preds = [c.label for c in choices]
    headline = (recipe.metrics() or ["exact_match"])[0]
    gold = [metrics.parse_label(r, labels) for r in refs]
    calibration = metrics.calibration([max(c.probs) for c in choices], [p == g for p, g in zip(preds, gold)])
    wrong = [(c, g) for c, g in zip(choices, gold) if c.label != g]
    calibration.update(wrong=len(wrong), second_choice_right=sum(len(labels) > 1 and c.top(labels)[1][0] == g
                                                                  for c, g in wrong))
    return {
        "metrics": metrics.compute(recipe.metrics(), preds, refs, labels),
        "label_details": metrics.details(preds, refs, labels),
        "calibration": calibration,
        "generation": {"wall_s": wall, "per_example_s": wall / len(prompts)},
        "predictions": [{"prompt": prompt, "reference": r, "prediction": c.label,
                         "correct": metrics.per_example_correct(headline, c.label, r, labels),
                         "top2": [[label, round(p, 4)] for label, p in c.top(labels)]}
                        for prompt, r, c in zip(prompts, refs, choices)],
    }


def compare(base: dict | None, tuned: dict, recipe: Recipe, labels: list[str] | None) -> dict:
    """Flips and differing examples between base and tuned predictions on the same prompts."""
    if not base or not base.get("predictions"):
        return {"flips": None, "examples": []}
    headline = (recipe.metrics() or ["exact_match"])[0]
    flips = {"base_wrong_tuned_right": 0, "base_right_tuned_wrong": 0}
    differing = []
    for b, t in zip(base["predictions"], tuned["predictions"]):
        if "correct" in b and "correct" in t:       # objectives that judge their own predictions
            bc, tc = bool(b["correct"]), bool(t["correct"])
        else:
            bc = metrics.per_example_correct(headline, b["prediction"], b["reference"], labels)
            tc = metrics.per_example_correct(headline, t["prediction"], t["reference"], labels)
        if bc != tc:
            flips["base_wrong_tuned_right" if tc else "base_right_tuned_wrong"] += 1
        if b["prediction"] != t["prediction"]:
            prompt = b["prompt"][-1]["content"] if isinstance(b["prompt"], list) and b["prompt"] else str(b["prompt"])
            differing.append({"prompt": prompt, "reference": b["reference"], "base": b["prediction"],
                              "tuned": t["prediction"], "base_correct": bc, "tuned_correct": tc})
    # show fixed examples first, then regressions, then other differences
    differing.sort(key=lambda e: (not (e["tuned_correct"] and not e["base_correct"]),
                                  not (e["base_correct"] and not e["tuned_correct"])))
    return {"flips": flips, "examples": differing[: recipe.eval.report_examples]}
