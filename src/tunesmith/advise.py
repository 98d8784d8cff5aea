"""`tunesmith advise`: measure the cheap baselines on a sample, time a training step, recommend a path."""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from .config import Recipe, load_recipe
from .errors import TunesmithError
from .eval.stats import gap_text, is_fraction, span_text, value_text
from .fsutil import atomic_write_json, new_run_dir

# bytes per parameter while training in fp32 with AdamW: weights + grads + two moments
FULL_BYTES_PER_PARAM = 16
WEIGHT_BYTES_PER_PARAM = 4


def machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_training(recipe: Recipe, model, tokenizer, objective, seqs: list, steps: int = 2) -> dict:
    """Forward+backward of the recipe's method on real training batches (``seqs``, built by ``objective``):
    tokens/s, peak memory and the trainable parameters, on the model exactly as training prepares it."""
    import torch

    from . import methods
    from .tuned import calibration, prepare_for_training
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = prepare_for_training(model, methods.get(recipe.method.name), objective, recipe, tokenizer,
                                 calibration=calibration(objective, seqs[: recipe.train.batch_size], pad))
    model.train()
    batch_size = recipe.train.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-9)
    tokens, t0 = 0, None
    for i in range(steps + 1):             # the first step warms up and is not timed
        items = seqs[(i * batch_size) % max(len(seqs), 1):][:batch_size] or seqs[:batch_size]
        batch = objective.collate(items, tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                  else tokenizer.eos_token_id)
        batch = {k: v.to(next(model.parameters()).device) if hasattr(v, "to") else v for k, v in batch.items()}
        if i == 1:
            t0 = time.perf_counter()
        out = objective(model, batch)
        (out.loss_sum / max(out.count, 1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 1:
            tokens += sum(len(s.input_ids) for s in items)
    wall = time.perf_counter() - (t0 or time.perf_counter())
    trainable = sum(p.numel() for p in params)
    return {"tokens_per_s": tokens / wall if wall > 0 else None, "trainable_parameters": trainable,
            "peak_rss_bytes": _rss_bytes()}


def choose_method(n_train: int, params: int, memory: int, probe: dict | None) -> dict:
    """Method family from data size and memory, with the arithmetic shown."""
    full_need = params * FULL_BYTES_PER_PARAM
    peak = (probe or {}).get("peak_rss_bytes") or params * WEIGHT_BYTES_PER_PARAM * 3
    why = [f"{n_train:,} training examples",
           f"full fine-tuning needs about {full_need / 2**30:.1f} GiB for weights, gradients and AdamW "
           f"state; this machine has {memory / 2**30:.1f} GiB"]
    if n_train < 50:
        return {"family": "none (prompting)", "method": None, "why": why + [
            "under 50 examples: fine-tuning would overfit; use few-shot or RAG and collect at least 200 examples"]}
    if memory and peak > 0.7 * memory:
        return {"family": "light adapters", "method": "ia3", "why": why + [
            f"a LoRA step peaked at {peak / 2**30:.1f} GiB, over 70% of memory: use ia3 or freeze with "
            "train.gradient_checkpointing: true"]}
    if n_train >= 5000 and memory and full_need < 0.4 * memory:
        return {"family": "full fine-tuning", "method": "full", "why": why + [
            "5,000+ examples and the full optimizer state fits in 40% of memory: full fine-tuning (or LoRA "
            "with a high rank) can use the data"]}
    if n_train < 200:
        return {"family": "small LoRA", "method": "lora", "r": 8, "why": why + [
            "50-200 examples: a low-rank LoRA (r=8) with early stopping; ia3 is a lighter alternative"]}
    return {"family": "LoRA", "method": "lora", "r": 16, "why": why + [
        "200-5,000 examples: LoRA r=16 on all projections is the best trade of quality, speed and size here"]}


_NAMES = {"base": "base zero-shot", "few_shot": "base few-shot", "rag": "base + RAG"}


def _top(key: str) -> float:
    return 1.0 if is_fraction(key) else 100.0


def _score_text(key: str, value: float, ci=None) -> str:
    return value_text(key, value) + (f" (95% CI {span_text(key, ci)})" if ci else "")


def verdict(scores: dict[str, float], key: str) -> dict:
    """Whether the baselines leave room for fine-tuning, from their scores on the sample."""
    top = _top(key)
    best = max(scores, key=scores.get)
    b = scores[best]
    base = scores.get("base", b)
    name = _NAMES.get(best, best)
    if b >= 0.95 * top:
        return {"fine_tune": False, "best_baseline": best,
                "text": f"{name} already scores {_score_text(key, b)}: fine-tuning has little room to help"}
    if best == "rag" and b - max(base, scores.get("few_shot", base)) > 0.15 * top:
        return {"fine_tune": True, "best_baseline": best,
                "text": "retrieval helps a lot (the task needs knowledge from your data): fine-tune for "
                        "format/behaviour and consider serving fine-tuned + RAG"}
    return {"fine_tune": True, "best_baseline": best,
            "text": f"the best cheap alternative ({name}) reaches {_score_text(key, b)}: there is room for "
                    "fine-tuning to help; the run's report will compare it against these baselines"}


def recommendation(scores: dict[str, float], key: str, method: dict, *, sample: int | None = None,
                   intervals: dict[str, list] | None = None, majority: dict | None = None) -> dict:
    """The one answer advise gives, with its reasons: fine-tune with a method, or deploy a cheap
    alternative. ``method`` is :func:`choose_method`'s answer (too little data means no method);
    ``majority``: ``{"answer", "score"}`` of always answering the most common training label."""
    quality = verdict(scores, key)
    best = quality["best_baseline"]
    intervals = intervals or {}
    reasons = [f"{key} on {sample or '?'} held-out examples: " + ", ".join(
        f"{_NAMES.get(k, k)} {_score_text(key, v, intervals.get(k))}" for k, v in scores.items())]
    if majority is not None:
        reasons.append(f"always answering {majority['answer']!r} (the most common training label) scores "
                       f"{_score_text(key, majority['score'])}")
    if method.get("method") is None:
        fine_tune = False
        text = (f"do not fine-tune yet: deploy {_NAMES.get(best, best)} and collect more examples "
                "(at least 200) before fine-tuning")
        reasons += method["why"]
    elif not quality["fine_tune"]:
        fine_tune = False
        text = f"do not fine-tune: deploy {_NAMES.get(best, best)}"
        reasons.append(quality["text"])
    else:
        fine_tune = True
        text = (f"fine-tune with {method['family']} (method.name: {method['method']}"
                + (f", method.r: {method['r']}" if method.get("r") else "") + ")")
        reasons += [quality["text"], *method["why"]]
    overrides = ([f"method.name={method['method']}"] + ([f"method.r={method['r']}"] if method.get("r") else [])) \
        if fine_tune else []
    return {"fine_tune": fine_tune, "deploy": None if fine_tune else best, "best_baseline": best, "scores": scores,
            "method": method.get("method") if fine_tune else None, "overrides": overrides,
            "family": method["family"] if fine_tune else "none (prompting)", "text": text, "reasons": reasons}


def advise(recipe: str | Path | dict | Recipe, overrides: list[str] | None = None, *, sample: int = 64) -> dict:
    from . import models
    from .data.prepare import build_splits
    from .data.split import sample_in_order
    from .eval.baselines import PromptBuilder, context_limit
    from .eval.decide import MAJORITY, headline, systems_table
    from .eval.evaluate import score_prompts
    from .train.progress import console
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    if not recipe.metrics():
        raise TunesmithError(f"advise compares systems on a generation metric; task {recipe.task} has none",
                             field="task")
    splits, manifest = build_splits(recipe)
    labels = manifest.get("labels") or manifest.get("inferred_labels")
    tests = sample_in_order([ex for ex in splits["test"] if ex.messages and ex.reference is not None], sample,
                            recipe.data.split.seed)
    if not tests:
        raise TunesmithError("no held-out examples with answers to measure baselines on", field="data.split.test")
    model, tokenizer = models.load(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    params = sum(p.numel() for p in model.parameters())
    builder = PromptBuilder(recipe, tokenizer, splits["train"], context_limit(model, tokenizer,
                                                                              recipe.eval.max_new_tokens))
    systems = {"base": [ex.prompt_messages for ex in tests], "few_shot": builder.few_shot(tests),
               "rag": builder.rag(tests)}
    results = {k: score_prompts(model, tokenizer, tests, p, recipe, labels, title=f"advise {k}")
               for k, p in systems.items()}
    key = headline(recipe, results["base"])
    scores = {k: float(v["metrics"].get(key, 0.0)) for k, v in results.items()}
    labels_out = label_options(recipe, model, tokenizer, splits["train"], tests, systems, labels, key)
    table = systems_table(results, recipe, labels, None,
                          train_references=[ex.reference for ex in splits["train"] if ex.reference is not None])
    rows = {row["system"]: row for row in table["rows"]}
    intervals = {k: (rows[k].get("intervals") or {}).get(key) for k in results if k in rows}
    floor = rows.get(MAJORITY)
    majority = {"answer": floor["answer"], "score": floor["metrics"].get(key),
                "interval": (floor.get("intervals") or {}).get(key)} \
        if floor and floor["metrics"].get(key) is not None else None
    objective, seqs = objective_seqs(recipe, splits, tokenizer)
    # objectives judged on their own metrics (preference, distillation) need a reference/teacher pass
    # first: no quick probe
    probe = time_training(recipe, model, tokenizer, objective, seqs) \
        if seqs and objective.compares_baselines else None
    memory = machine_memory_bytes()
    n_train = len(splits["train"])
    train_tokens = sum(len(s.input_ids) for s in seqs) * recipe.train.epochs
    estimate = train_tokens / probe["tokens_per_s"] if probe and probe["tokens_per_s"] else None
    budget = budget_coverage(recipe, seqs, probe)
    out = {
        "recipe": recipe.name, "model": recipe.model.name, "parameters": params, "metric": key,
        "sample": len(tests), "counts": manifest["counts"],
        "baselines": {k: {"score": scores[k], "interval": intervals.get(k), "metrics": v["metrics"],
                          "prompt_tokens": v["generation"]["prompt_tokens"],
                          "latency_s": v["generation"]["per_example_s"]} for k, v in results.items()},
        "majority": majority, "label_options": labels_out,
        "machine": {"memory_bytes": memory, "cpus": os.cpu_count()},
        "training_probe": probe, "estimated_training_s": estimate, "budget": budget,
    }
    rec = recommendation(scores, key, choose_method(n_train, params, memory, probe), sample=len(tests),
                         intervals=intervals, majority=majority)
    if labels_out:
        rec = with_label_path(rec, labels_out)
    if budget and rec["fine_tune"] and budget["fraction_of_epoch"] < 0.5:
        rec["reasons"].append(budget["text"] + ": the model sees under half the training data once; a longer "
                              "budget (or fewer, shorter examples) is likely to score higher")
    # the fine-tune/method fields are views of the one recommendation, so they cannot disagree
    out["recommendation"] = rec
    out["verdict"] = {"fine_tune": rec["fine_tune"], "best_baseline": rec["best_baseline"], "text": rec["text"]}
    out["method"] = {"family": rec["family"], "method": rec["method"], "why": rec["reasons"]}
    folder = new_run_dir(recipe.output_dir, f"{recipe.name}-advise")
    atomic_write_json(folder / "advise.json", out)
    out["path"] = str(folder / "advise.json")
    console.print(f"advice saved to {out['path']}")
    return out


def label_options(recipe: Recipe, model, tokenizer, train: list, tests: list, systems: dict, labels: list | None,
                  key: str) -> dict | None:
    """On a label task: the baselines answered with label-safe decoding, and a linear probe of the frozen base
    (what a classification head starts from), each with its score and 95% interval on the same sample."""
    from .constrained import MAX_LABELS
    from .eval import linear_probe
    from .eval.evaluate import label_safe
    from .eval.stats import interval, item_stat, resample_weights
    if not labels or len(labels) > MAX_LABELS:
        return None
    refs = [ex.reference for ex in tests]
    weights = resample_weights(len(tests))

    def scored(preds: list[str], **extra) -> dict | None:
        stat = item_stat(key, preds, refs, labels)
        return None if stat is None else {"score": float(stat.point()), "interval": interval(stat, weights), **extra}
    safe = {}
    for k, prompts in systems.items():
        res = label_safe(model, tokenizer, prompts, refs, recipe, labels, title=f"advise {k}")
        if res and "predictions" in res:
            safe[k] = scored([p["prediction"] for p in res["predictions"]])
    fitted = linear_probe.probe(model, tokenizer, train, tests, labels, max_length=recipe.data.max_length,
                                seed=recipe.train.seed)
    head = scored(fitted["predictions"], train_examples=fitted["train_examples"], wall_s=fitted["wall_s"]) \
        if fitted else None
    if not safe and head is None:
        return None
    return {"metric": key, "label_safe": {k: v for k, v in safe.items() if v}, "linear_probe": head}


def with_label_path(rec: dict, options: dict) -> dict:
    """The recommendation with its label path (its objective always named in the overrides): a classification
    head (``objective.name=classification``; the head starts from this probe, ``objective.head_init: probe``) when a linear probe of the
    frozen base already beats every generated answer (free or label-safe) on the sample; SFT answered with
    label-safe decoding when that beats free generation by 5 points or more; else SFT. The measured numbers
    are the reasons."""
    key = options["metric"]
    top = _top(key)
    free = rec["scores"]
    safe = {k: v["score"] for k, v in options["label_safe"].items()}
    head = options["linear_probe"]
    best_free, best_safe = max(free.values()), max(safe.values(), default=float("-inf"))
    lines = []
    if safe:
        lines.append("label-safe decoding: " + ", ".join(f"{_NAMES.get(k, k)} {_score_text(key, v)}"
                                                          for k, v in safe.items()))
    if head:
        lines.append(f"a linear head on the frozen base's features (fitted on {head['train_examples']} training "
                     f"examples in {head['wall_s']:.0f}s) scores {_score_text(key, head['score'], head['interval'])}")
    if head and head["score"] > max(best_free, best_safe):
        path, overrides = "classification head", ["objective.name=classification"]
        lines.append("the head beats every generated answer before any training: objective.name: classification "
                     "(every answer a label, with its probability, in one forward pass; the head starts from this "
                     "probe and trains with the adapter; the server answers its chat completions with a label)")
    elif safe and best_safe >= best_free + 0.05 * top:
        path, overrides = "SFT, label-safe answers", ["objective.name=sft"]
        lines.append("label-safe decoding beats free generation by "
                     f"{gap_text(key, best_safe - best_free)}: fine-tune with SFT and answer with label-safe "
                     "decoding (eval.label_safe, the server's response_format)")
    else:
        path, overrides = "SFT", ["objective.name=sft"]   # named: the recipe may train a head
    out = dict(rec, label_path=path, reasons=rec["reasons"] + lines)
    if rec["fine_tune"]:
        out["overrides"] = rec["overrides"] + overrides
        out["text"] = rec["text"] + (f", {path}" if path != "SFT" else "")
    return out


def budget_coverage(recipe: Recipe, seqs: list, probe: dict | None) -> dict | None:
    """With ``train.time_budget``: about how many training sequences the budget covers at the probe's speed,
    within ``train.epochs`` and ``train.max_steps`` (a rough figure: the probe times a few forward/backward
    steps; the run's own plan times its first steps and also counts validation and checkpoints)."""
    from .durations import parse_duration
    t = recipe.train
    if not (t.time_budget and seqs and probe and probe.get("tokens_per_s")):
        return None
    budget_s = parse_duration(t.time_budget)
    per_seq = sum(len(s.input_ids) for s in seqs) / len(seqs)
    limit = len(seqs) * t.epochs
    if t.max_steps:
        limit = min(limit, t.max_steps * t.batch_size * t.grad_accum)
    covered = int(min(budget_s * probe["tokens_per_s"] / per_seq, limit))
    what = "packed sequences" if recipe.data.packing else "training examples"
    return {"budget_s": budget_s, "sequences_in_budget": covered, "train_sequences": len(seqs),
            "fraction_of_epoch": covered / len(seqs),
            "text": f"train.time_budget {t.time_budget} covers about {covered:,} {what} "
                    f"({covered / len(seqs):.0%} of an epoch over {len(seqs):,})"}


def objective_seqs(recipe: Recipe, splits: dict, tokenizer):
    """The recipe's objective and the training items it builds from ``splits`` (a label head learns its
    labels here)."""
    from . import objectives
    objective = objectives.from_recipe(recipe)
    seqs, _ = objective.build({"train": splits["train"]}, tokenizer, recipe)
    return objective, seqs["train"]


def print_advice(out: dict, console) -> None:
    from rich.table import Table
    key = out["metric"]
    t = Table(title=f"Cheap baselines on {out['sample']} held-out examples ({out['model']})")
    for col in ("system", key, "95% CI", "prompt tokens / request", "latency / request"):
        t.add_column(col, justify="right" if col != "system" else "left")
    for k, b in out["baselines"].items():
        ci = b.get("interval")
        t.add_row(_NAMES.get(k, k), f"{b['score']:.3f}", f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "—",
                  f"{b['prompt_tokens']:.0f}", f"{1000 * b['latency_s']:.0f} ms")
    if out.get("majority"):
        ci = out["majority"].get("interval")
        t.add_row(f"majority class (always {out['majority']['answer']!r})", f"{out['majority']['score']:.3f}",
                  f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "—", "—", "—")
    opts = out.get("label_options") or {}
    extra = [(f"{_NAMES.get(k, k)}, label-safe", v) for k, v in (opts.get("label_safe") or {}).items()]
    if opts.get("linear_probe"):
        extra.append((f"linear head on frozen features ({opts['linear_probe']['train_examples']} examples)",
                      opts["linear_probe"]))
    for name, v in extra:
        ci = v.get("interval")
        t.add_row(name, f"{v['score']:.3f}", f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "—", "—", "—")
    console.print(t)
    probe = out.get("training_probe") or {}
    if out.get("estimated_training_s"):
        console.print(f"training: {probe['tokens_per_s']:.0f} tokens/s measured with {out['counts']['train']:,} "
                      f"examples -> about {out['estimated_training_s'] / 60:.1f} min for the recipe's epochs; "
                      f"peak memory {probe['peak_rss_bytes'] / 2**30:.1f} GiB")
    if out.get("budget"):
        console.print(out["budget"]["text"])
    rec = out["recommendation"]
    console.print(f"[bold]recommendation:[/bold] {rec['text']}")
    console.print(f"  fine-tune? {'yes' if rec['fine_tune'] else 'no'} · method: "
                  + (f"{rec['family']} (method.name: {rec['method']})" if rec["method"] else rec["family"]))
    for line in rec["reasons"]:
        console.print(f"  - {line}")
