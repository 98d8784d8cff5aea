"""The evaluation stage: base and tuned task metrics, baselines, forgetting, contamination, the report."""
from __future__ import annotations

from ..config_methods import evaluation_settings
from ..data.split import sample_in_order
from ..fsutil import atomic_write_json
from ..objectives.base import hook
from ..session import Session


def evaluate_split(session: Session, model, title: str, which: str) -> dict:
    """Task evaluation: the objective's own (``which`` is "base" or "tuned") or generation metrics.

    Multi-task runs evaluate every task on its own test examples; metrics are keyed ``task/metric``.
    """
    tasks = session.manifest.get("tasks")
    if not tasks:
        exs, seqs = session.eval_examples()
        return _evaluate_one(session, model, title, which, exs, seqs, session.labels)
    combined: dict = {"loss": {}, "metrics": {}, "predictions": [], "tasks": {}}
    r = session.run.recipe
    n = r.eval.max_examples
    seqs = session.seqs["test"]
    for name, info in tasks.items():   # the cap applies per task
        subset = sample_in_order([ex for ex in session.splits["test"] if ex.task == name], n, r.data.split.seed)
        if not subset:
            continue
        task_seqs = session.objective.build({"test": subset}, session.tokenizer, session.run.recipe)[0]["test"]
        res = _evaluate_one(session, model, f"{title} [{name}]", which, subset, task_seqs, info.get("labels"))
        combined["tasks"][name] = {k: v for k, v in res.items() if k != "predictions"}
        combined["metrics"].update({f"{name}/{k}": v for k, v in res["metrics"].items()})
        combined["loss"].update({f"{name}/{k}": v for k, v in res.get("loss", {}).items()
                                 if k in ("val_loss", "perplexity")})
        combined["predictions"] += [{**p, "task": name} for p in res["predictions"]]
    if seqs:
        combined["loss"].update(_loss_all(session, model, seqs))
    return combined


def _loss_all(session: Session, model, seqs) -> dict:
    from ..train.loop import evaluate_loss
    out = evaluate_loss(model, seqs, session.objective, batch_size=session.run.recipe.train.batch_size,
                        pad_id=session.tokenizer.pad_token_id, device=next(model.parameters()).device)
    return {"val_loss": out["val_loss"], "perplexity": out["perplexity"]}


def _evaluate_one(session: Session, model, title: str, which: str, exs, seqs, labels) -> dict:
    from .evaluate import evaluate_model
    own = hook(session.objective, "evaluate")
    if own:
        return own(model, session.tokenizer, exs, seqs, session.run.recipe, which=which)
    return evaluate_model(model, session.tokenizer, exs, seqs, session.run.recipe, labels,
                          session.objective, title=title)


def baseline_skip_reason(session: Session) -> str | None:
    """Why few-shot / RAG baselines are not measured for this run, or None when they are."""
    r = session.run.recipe
    if session.manifest.get("tasks"):
        return "baselines are measured on single-task recipes"
    if not r.metrics():
        return f"task {r.task} has no generation metric to compare systems on"
    if not session.objective.compares_baselines:
        return f"objective {r.objective.name} is compared on its own metrics"
    return None


def baseline_tests(session: Session) -> list:
    exs, _ = session.eval_examples()
    chat = [ex for ex in exs if ex.messages and ex.reference is not None]
    r = session.run.recipe
    return sample_in_order(chat, r.eval.baseline_examples, r.data.split.seed)


def baseline_prompts(session: Session, model, kind: str, tests: list) -> list:
    """The few-shot (``kind`` "few_shot") or retrieval-augmented prompts for ``tests``."""
    from .baselines import PromptBuilder, context_limit
    r = session.run.recipe
    if session.prompt_builder is None:
        session.prompt_builder = PromptBuilder(r, session.tokenizer, session.splits["train"],
                                               context_limit(model, session.tokenizer, r.eval.max_new_tokens))
    builder = session.prompt_builder
    return builder.few_shot(tests) if kind == "few_shot" else builder.rag(tests)


def score_baseline(session: Session, model, kind: str, tests: list, prompts: list | None = None) -> dict:
    """Few-shot, RAG or tuned+RAG prompts for ``tests`` (built unless given), answered by ``model`` and scored."""
    from .evaluate import score_prompts
    r = session.run.recipe
    if prompts is None:
        prompts = baseline_prompts(session, model, kind, tests)
    title = {"few_shot": "eval base few-shot", "rag": "eval base + RAG", "tuned_rag": "eval tuned + RAG"}[kind]
    res = score_prompts(model, session.tokenizer, tests, prompts, r, session.labels, title=title)
    for pred, ex in zip(res["predictions"], tests):
        pred["prompt"] = ex.prompt_messages        # keep the files small: the question, not the context
    return res


def measure_general(session: Session, model, title: str) -> dict:
    """General-text perplexity and general answers of ``model`` (skipped for non-generative objectives)."""
    from ..objectives import SFTObjective
    from . import forgetting
    if not session.objective.generates_text:
        return {"skipped": forgetting.NOT_GENERATIVE}
    return forgetting.measure(model, session.tokenizer, session.run.recipe, title=title,
                              text_objective=SFTObjective())


def eval_precision(session: Session):
    """The precision evaluation computes in (``eval.precision``; see ``train.precision``) and why."""
    import torch

    from ..train.precision import choose
    return choose(session.run.recipe.eval.precision, torch.device(session.device), "eval.precision")


def measure_base(session: Session) -> dict | None:
    """:func:`measure_base_parts` in the evaluation precision."""
    with eval_precision(session).autocast():
        return measure_base_parts(session)


def measure_base_parts(session: Session) -> dict | None:
    """Everything measured on the untouched base model (kept in eval/): zero-shot, few-shot, RAG and
    the forgetting baseline. Must run before training changes the base weights in this process.

    Each part is reused from the eval cache ($TUNESMITH_HOME/eval-cache) when the same weights answered
    the same prompts with the same settings before (``eval.cache``); a reused part records
    ``"cached": {"key", "measured"}`` in its eval/ file and the run prints one line saying so."""
    run, r = session.run, session.run.recipe
    cache = base_cache(session)
    hits: list = []

    def measured(part: str, inputs: dict | None, fn) -> dict:
        if cache is None or inputs is None:
            return fn()
        result, hit = cache.measure(part, inputs, fn)
        if hit is None:
            return result
        hits.append((part, hit))
        return {**result, "cached": hit.as_dict()}

    base_result = None
    if r.eval.compare_base:
        base_result = run.load_json("eval/base.json")
        if base_result is None:
            base_result = measured("zero-shot", _zero_shot_inputs(session),
                                   lambda: evaluate_split(session, session.base_model, "eval base", "base"))
            atomic_write_json(run.eval_dir / "base.json", base_result)
    cheap = [k for k in r.eval.baselines if k in ("few_shot", "rag")]
    if cheap and run.load_json("eval/baselines.json") is None:
        reason = baseline_skip_reason(session)
        out: dict = {"skipped": reason} if reason else {}
        if not reason:
            tests = baseline_tests(session)
            for kind in cheap:
                prompts = baseline_prompts(session, session.base_model, kind, tests)
                out[kind] = measured(kind, _baseline_inputs(session, tests, prompts),
                                     lambda: score_baseline(session, session.base_model, kind, tests, prompts))
        atomic_write_json(run.eval_dir / "baselines.json", out)
    if run.load_json("eval/forgetting_base.json") is None and (r.forgetting.general_text or
                                                               r.forgetting.general_prompts):
        atomic_write_json(run.eval_dir / "forgetting_base.json",
                          measured("forgetting", _general_inputs(session),
                                   lambda: measure_general(session, session.base_model, "general (base)")))
    _say_reused(hits, cache)
    return base_result


def base_cache(session: Session):
    """The eval cache for this run's base model, or None (``eval.cache: false``, or weights of unknown identity)."""
    from .. import models
    from .cache import EvalCache, environment, model_fingerprint
    r = session.run.recipe
    if not r.eval.cache or session.base_model is None:
        return None
    try:
        fingerprint = model_fingerprint(models.resolve(r.model.name), session.base_model)
    except OSError:
        return None
    if fingerprint is None:
        return None
    return EvalCache({"model": fingerprint, **environment(session.device, session.base_model)})


# objectives whose base evaluation is not the base model's alone, or leaves state the tuned evaluation uses


def _example_key(ex) -> dict:
    """What of an example reaches the model and the scores (not where it came from)."""
    return {"messages": ex.messages, "text": ex.text, "label": ex.label, "rejected": ex.rejected, "task": ex.task}


def _settings(session: Session) -> dict:
    r = session.run.recipe
    return {"task": r.task, "metrics": r.metrics(), "labels": session.labels,
            "max_new_tokens": r.eval.max_new_tokens, "eval_batch_size": r.eval.batch_size,
            "eval_precision": getattr(r.eval, "precision", None)}


def _zero_shot_inputs(session: Session) -> dict | None:
    r = session.run.recipe
    if session.objective.own_model:     # e.g. distill: its base evaluation is the teacher's, kept for the comparison
        return None
    tasks = session.manifest.get("tasks")
    exs, seqs = (session.splits["test"], session.seqs["test"]) if tasks else session.eval_examples()
    return {**_settings(session), "examples": [_example_key(ex) for ex in exs], "items": list(seqs),
            "tasks": tasks, "objective": evaluation_settings(r.objective),
            "objective_labels": getattr(session.objective, "labels", None),
            "max_examples": r.eval.max_examples, "train_batch_size": r.train.batch_size,
            "data": r.data.model_dump(mode="json") if tasks else None}   # multi-task rebuilds items per task


def _baseline_inputs(session: Session, tests: list, prompts: list) -> dict:
    return {**_settings(session), "prompts": prompts, "references": [ex.reference for ex in tests],
            "questions": [ex.prompt_messages for ex in tests]}


def _general_inputs(session: Session) -> dict | None:
    from . import forgetting
    r = session.run.recipe
    if not session.objective.generates_text:
        return None                       # nothing is measured
    docs, _ = forgetting.general_documents(r)
    return {"documents": docs, "prompts": forgetting.general_prompts(r),
            "max_length": min(r.data.max_length, 512), "train_batch_size": r.train.batch_size,
            "eval_batch_size": r.eval.batch_size, "eval_precision": getattr(r.eval, "precision", None)}


_PART_NAMES = {"zero-shot": "zero-shot", "few_shot": "few-shot", "rag": "RAG", "forgetting": "forgetting baseline"}


def _say_reused(hits: list, cache) -> None:
    from ..train.progress import console
    if cache is not None and cache.ignored:
        console.print(f"[yellow]eval cache: ignored {len(cache.ignored)} unreadable entr"
                      f"{'y' if len(cache.ignored) == 1 else 'ies'} (measured again and replaced)[/yellow]")
    if not hits:
        return
    dates = sorted({h.measured.replace("T", " ")[:16] for _, h in hits})
    parts = ", ".join(f"{_PART_NAMES.get(p, p)} {h.key[:12]}" for p, h in hits)
    console.print(f"reused the base model's results from the eval cache (measured {' / '.join(dates)} UTC): "
                  f"{parts}; eval.cache: false measures again", markup=False, highlight=False, soft_wrap=True)


def evaluate(session: Session, base_result: dict | None = None, tuned_model=None) -> dict:
    """Evaluate base and tuned models on the test split, in the evaluation precision; writes eval/*.json and
    the reports."""
    precision = eval_precision(session)
    with precision.autocast():
        return evaluate_all(session, precision, base_result, tuned_model)


def evaluate_all(session: Session, precision, base_result: dict | None = None, tuned_model=None) -> dict:
    """:func:`evaluate`'s work, under ``precision`` (recorded in report_data.json)."""
    from .evaluate import compare
    from .report import write_reports
    run, r = session.run, session.run.recipe
    if base_result is None and session.tuned_model is None:
        base_result = measure_base(session)      # the base weights are still untouched in this process
    elif base_result is None and r.eval.compare_base:
        base_result = run.load_json("eval/base.json")
    tuned_model = tuned_model or session.load_tuned()
    tuned_result = evaluate_split(session, tuned_model, "eval tuned", "tuned")
    atomic_write_json(run.eval_dir / "tuned.json", tuned_result)
    if base_result:
        atomic_write_json(run.eval_dir / "base.json", base_result)
    diff = compare(base_result, tuned_result, r, session.labels)
    decision = _decide(session, base_result, tuned_result, tuned_model)
    lineage = _backward(session, tuned_model, tuned_result, base_result)
    summary = {"base": _headline(base_result), "tuned": _headline(tuned_result), **diff,
               "systems": {row["system"]: row["metrics"] for row in decision["systems"]["rows"]},
               "recommendation": decision["recommendation"],
               "forgetting_flagged": bool((decision["forgetting"] or {}).get("flagged")),
               "contaminated": decision["contamination"]["contaminated"]}
    atomic_write_json(run.summary_json, summary)
    training = run.load_json("train.json") or {}
    results = {
        "name": r.name, "model": r.model.name, "method": r.method.name, "task": r.task,
        "metrics": {k: v["metrics"] for k, v in (("base", base_result), ("tuned", tuned_result)) if v},
        "loss": {k: v["loss"] for k, v in (("base", base_result), ("tuned", tuned_result)) if v},
        "label_details": {k: v.get("label_details") for k, v in (("base", base_result), ("tuned", tuned_result))
                          if v and v.get("label_details")} or None,
        "examples": diff["examples"], "flips": diff["flips"], "distillation": tuned_result.get("distillation"),
        "counts": {**session.manifest["counts"], "evaluated": len(tuned_result["predictions"])},
        "training": {"steps": training.get("steps"), "train_tokens": training.get("tokens"),
                     "tokens_per_s": training.get("tokens_per_s"), "wall_s": training.get("wall_s"),
                     "best_step": training.get("best_step"), "best_val_loss": training.get("best_val_loss"),
                     "early_stopped": training.get("early_stopped"),
                     "selected_on": training.get("selected_on"), "best_score": training.get("best_score"),
                     "trainable_parameters": training.get("trainable_parameters"),
                     "objective_notes": training.get("objective_notes"),
                     "distributed": training.get("distributed")},
        "artifacts": (run.load_json("export/export.json") or {}),
        **decision,
        "lengths": {name: [t.length for t in seqs] for name, seqs in session.seqs.items() if seqs},
        "max_length": r.data.max_length,
        "lineage": lineage, "eval_precision": precision.as_dict(),
    }
    atomic_write_json(run.eval_dir / "report_data.json", results)
    write_reports(run.path, results)
    run.mark("eval", tuned=summary["tuned"]["metrics"])
    return summary


def _backward(session: Session, tuned_model, tuned_result: dict, base_result: dict | None) -> dict | None:
    """A continued version (`tunesmith continue`): its scores on every ancestor's test suite (eval/backward.json)."""
    from . import backward
    out = backward.evaluate_backward(session, tuned_model, tuned_result, base_result)
    if out is None:
        return None
    earlier = [{k: v for k, v in b.items() if k != "earlier"}
               for b in backward.earlier_backward(backward.continuation(session.run), session.run.path)]
    return {**out, "earlier": earlier}


def _decide(session: Session, base_result, tuned_result, tuned_model) -> dict:
    """Baselines side by side with the tuned model, forgetting, contamination and the recommendation."""
    from . import contamination, decide, forgetting
    run, r = session.run, session.run.recipe
    baselines = run.load_json("eval/baselines.json") or {}
    results = {"base": base_result, "tuned": tuned_result,
               **{k: v for k, v in baselines.items() if k in ("few_shot", "rag")}}
    if "tuned_rag" in r.eval.baselines and not baseline_skip_reason(session) and \
            session.objective.generates_text:     # a label head does not read retrieved passages
        results["tuned_rag"] = score_baseline(session, tuned_model, "tuned_rag", baseline_tests(session))
        atomic_write_json(run.eval_dir / "baselines.json", {**baselines, "tuned_rag": results["tuned_rag"]})
    table = decide.systems_table(results, r, session.labels, run.load_json("train.json"),
                                 train_references=[ex.reference for ex in session.splits["train"]
                                                   if ex.reference is not None])
    forgot = None
    before = run.load_json("eval/forgetting_base.json")
    if before is not None:
        after = measure_general(session, tuned_model, "general (tuned)")
        forgot = forgetting.compare(before, after, r.forgetting.threshold, session.labels)
        forgot["replay"] = session.token_stats.get("replay")     # what training did against forgetting
        atomic_write_json(run.eval_dir / "forgetting.json", {"before": before, "after": after,
                                                             "comparison": forgot})
    exs, _ = session.eval_examples()
    contam = contamination.check(session.splits["train"], exs, r.eval.contamination_threshold)
    atomic_write_json(run.eval_dir / "contamination.json", contam)
    return {"systems": table, "recommendation": decide.recommend(table, forgot), "forgetting": forgot,
            "contamination": contam, "baselines_skipped": baselines.get("skipped")}


def _headline(result: dict | None) -> dict | None:
    if not result:
        return None
    return {"metrics": result["metrics"], "loss": result["loss"]}


__all__ = ["evaluate", "measure_base", "base_cache", "evaluate_split", "score_baseline", "baseline_prompts",
           "baseline_tests", "baseline_skip_reason", "measure_general"]
