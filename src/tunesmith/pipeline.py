"""The stages as functions over a self-describing run directory: prepare, train, evaluate, export, run."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from . import methods, models, objectives
from .config import Recipe, dump_recipe, load_recipe
from .data.prepare import build_splits, load_splits, save_splits
from .errors import TunesmithError
from .fsutil import atomic_write_json, atomic_write_text, new_run_dir
from .objectives.base import hook
from .train.progress import console


def _versions() -> dict:
    import peft
    import torch
    import transformers

    from . import __version__
    return {"tunesmith": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(), "machine": platform.machine()}


def _device(recipe: Recipe) -> str:
    import torch
    if recipe.train.device != "auto":
        return recipe.train.device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Run:
    """A run directory: resolved recipe, data, metrics, checkpoints, eval, report, export."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "recipe.yaml").is_file():
            raise TunesmithError("not a tunesmith run directory (no recipe.yaml)", file=str(path))
        self.recipe = load_recipe(self.path / "recipe.yaml")

    @classmethod
    def create(cls, recipe: Recipe) -> "Run":
        path = new_run_dir(recipe.output_dir, recipe.name)
        atomic_write_text(path / "recipe.yaml", dump_recipe(recipe))
        atomic_write_json(path / "run.json", {"created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              "versions": _versions(), "stages": {}})
        return cls(path)

    def info(self) -> dict:
        return json.loads((self.path / "run.json").read_text())

    def mark(self, stage: str, **fields) -> None:
        info = self.info()
        info["stages"][stage] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
        atomic_write_json(self.path / "run.json", info)

    def load_json(self, rel: str) -> dict | None:
        p = self.path / rel
        return json.loads(p.read_text()) if p.is_file() else None


def _track(run: Run) -> None:
    """Log the run so far to MLflow/TensorBoard (per the recipe); a broken tracking store never loses a run."""
    cfg = run.recipe.tracking
    if not (cfg.mlflow or cfg.tensorboard):
        return
    from .tracking import log_run
    try:
        log_run(run.path, cfg)
    except TunesmithError as e:
        console.print(f"[yellow]tracking skipped: {e}[/yellow]")


def _as_run(target: str | Path | Run) -> Run:
    return target if isinstance(target, Run) else Run(Path(target))


def _recipe(recipe: str | Path | dict | Recipe, overrides: list[str] | None) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)


# ---- stages -------------------------------------------------------------------------------------

def validate(path: str, recipe: str | Path | dict | Recipe | None = None, overrides: list[str] | None = None,
             out: str | Path | None = None, with_tokens: bool = True) -> dict:
    """Validate a data file over its whole length; returns (and optionally saves) the report."""
    from .config import DataConfig
    from .data.validate import save_report, validate as _validate
    cfg = _recipe(recipe, overrides) if recipe is not None else None
    data_cfg = cfg.data.model_copy(update={"train": path}) if cfg else DataConfig(train=path)
    tok = None
    if with_tokens:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(models.resolve(cfg.model.name if cfg else "smollm2-135m-instruct"))
    report = _validate(data_cfg, path, tok)
    if out:
        save_report(report, Path(out))
    return report


def prepare(recipe: str | Path | dict | Recipe, overrides: list[str] | None = None) -> Run:
    """Create a run directory and write its preprocessed, split data with a manifest."""
    recipe = _recipe(recipe, overrides)
    models.resolve(recipe.model.name)     # fail early on an unknown model
    splits, manifest = build_splits(recipe)
    run = Run.create(recipe)
    save_splits(run.path / "data", splits, manifest)
    run.mark("prepare", counts=manifest["counts"])
    console.print(f"prepared data: {manifest['counts']}  ->  {run.path / 'data'}")
    return run


class _Session:
    """What the later stages share in one process: tokenizer, splits, tokenised sequences."""

    def __init__(self, run: Run):
        self.run = run
        r = run.recipe
        self.device = _device(r)
        self.splits, self.manifest = load_splits(run.path / "data")
        self.labels = self.manifest.get("labels")
        self.method = methods.get(r.method.name)
        self.objective = objectives.from_recipe(r)
        self.base_model, self.tokenizer = models.load(r.model.name, device=self.device,
                                                      trust_remote_code=r.model.trust_remote_code)
        self.seqs, self.token_stats = self.objective.build(self.splits, self.tokenizer, r)
        from .eval.forgetting import replay_sequences
        replay = replay_sequences(r, self.tokenizer, len(self.seqs["train"]))
        if replay:
            self.seqs["train"] = self.seqs["train"] + replay
            self.token_stats["replay"] = {"sequences": len(replay), "tokens": sum(t.length for t in replay)}
        if not self.seqs["train"]:
            raise TunesmithError("no training example has trainable tokens within data.max_length",
                                 field="data.max_length")

    def eval_examples(self):
        n = self.run.recipe.eval.max_examples
        exs, seqs = self.splits["test"], self.seqs["test"]
        return (exs[:n], seqs[:n]) if n else (exs, seqs)


def _evaluate(session: _Session, model, title: str, which: str) -> dict:
    """Task evaluation: the objective's own (``which`` is "base" or "tuned") or generation metrics.

    Multi-task runs evaluate every task on its own test examples; metrics are keyed ``task/metric``.
    """
    tasks = session.manifest.get("tasks")
    if not tasks:
        exs, seqs = session.eval_examples()
        return _evaluate_one(session, model, title, which, exs, seqs, session.labels)
    combined: dict = {"loss": {}, "metrics": {}, "predictions": [], "tasks": {}}
    n = session.run.recipe.eval.max_examples
    seqs = session.seqs["test"]
    for name, info in tasks.items():
        subset = [ex for ex in session.splits["test"] if ex.task == name][:n]   # the cap applies per task
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


def _loss_all(session: _Session, model, seqs) -> dict:
    from .train.loop import evaluate_loss
    out = evaluate_loss(model, seqs, session.objective, batch_size=session.run.recipe.train.batch_size,
                        pad_id=session.tokenizer.pad_token_id, device=next(model.parameters()).device)
    return {"val_loss": out["val_loss"], "perplexity": out["perplexity"]}


def _evaluate_one(session: _Session, model, title: str, which: str, exs, seqs, labels) -> dict:
    from .eval.evaluate import evaluate_model
    own = hook(session.objective, "evaluate")
    if own:
        return own(model, session.tokenizer, exs, seqs, session.run.recipe, which=which)
    return evaluate_model(model, session.tokenizer, exs, seqs, session.run.recipe, labels,
                          session.objective, title=title)


def _baseline_skip_reason(session: _Session) -> str | None:
    r = session.run.recipe
    if session.manifest.get("tasks"):
        return "baselines are measured on single-task recipes"
    if not r.metrics():
        return f"task {r.task} has no generation metric to compare systems on"
    if r.objective.name not in ("sft", "classification"):
        return f"objective {r.objective.name} is compared on its own metrics"
    return None


def _baseline_tests(session: _Session) -> list:
    exs, _ = session.eval_examples()
    chat = [ex for ex in exs if ex.messages and ex.reference is not None]
    n = session.run.recipe.eval.baseline_examples
    return chat[:n] if n else chat


def _prompt_builder(session: _Session, model):
    from .eval.baselines import PromptBuilder, context_limit
    if getattr(session, "prompt_builder", None) is None:
        r = session.run.recipe
        session.prompt_builder = PromptBuilder(r, session.tokenizer, session.splits["train"],
                                               context_limit(model, session.tokenizer, r.eval.max_new_tokens))
    return session.prompt_builder


def _score_baseline(session: _Session, model, kind: str, tests: list) -> dict:
    from .eval.evaluate import score_prompts
    builder = _prompt_builder(session, model)
    prompts = builder.few_shot(tests) if kind == "few_shot" else builder.rag(tests)
    title = {"few_shot": "eval base few-shot", "rag": "eval base + RAG", "tuned_rag": "eval tuned + RAG"}[kind]
    res = score_prompts(model, session.tokenizer, tests, prompts, session.run.recipe, session.labels, title=title)
    for pred, ex in zip(res["predictions"], tests):
        pred["prompt"] = ex.prompt_messages        # keep the files small: the question, not the context
    return res


def measure_base(session: _Session) -> dict | None:
    """Everything measured on the untouched base model (cached in eval/): zero-shot, few-shot, RAG and
    the forgetting baseline. Must run before training changes the base weights in this process."""
    from .eval import forgetting
    run, r = session.run, session.run.recipe
    base_result = None
    if r.eval.compare_base:
        base_result = run.load_json("eval/base.json")
        if base_result is None:
            base_result = _evaluate(session, session.base_model, "eval base", "base")
            atomic_write_json(run.path / "eval" / "base.json", base_result)
    cheap = [k for k in r.eval.baselines if k in ("few_shot", "rag")]
    if cheap and run.load_json("eval/baselines.json") is None:
        reason = _baseline_skip_reason(session)
        out: dict = {"skipped": reason} if reason else {}
        if not reason:
            tests = _baseline_tests(session)
            for kind in cheap:
                out[kind] = _score_baseline(session, session.base_model, kind, tests)
        atomic_write_json(run.path / "eval" / "baselines.json", out)
    if run.load_json("eval/forgetting_base.json") is None and (r.forgetting.general_text or
                                                               r.forgetting.general_prompts):
        before = forgetting.measure(session.base_model, session.tokenizer, r, title="general (base)")
        atomic_write_json(run.path / "eval" / "forgetting_base.json", before)
    return base_result


def train(target: str | Path | Run | Recipe, overrides: list[str] | None = None, *, resume: bool = False,
          session: _Session | None = None, stop_after: int | None = None, on_eval=None, on_step=None):
    """Train on a prepared run (or prepare one from a recipe first); saves ``model/``."""
    from .export import save_tuned
    from .train.loop import train as loop_train
    run = prepare(target, overrides) if isinstance(target, (Recipe, dict)) or str(target).endswith(
        (".yaml", ".yml")) else _as_run(target)
    session = session or _Session(run)
    r = run.recipe
    if resume and not (run.path / "checkpoints").is_dir():
        raise TunesmithError("nothing to resume: the run has no checkpoints", file=str(run.path))
    if not resume and (run.path / "model").exists():
        raise TunesmithError("run already trained; start a new run or use --resume", file=str(run.path))
    from .methods.base import count_trainable
    model = session.base_model
    if hook(session.objective, "attach"):
        model = session.objective.attach(model, session.tokenizer, r)
    if hook(session.objective, "before_training"):
        session.objective.before_training(model, session.seqs)
    from .train.loop import seed_everything
    seed_everything(r.train.seed)       # adapters' random init depends on it
    model = session.method.apply(model, r.method, calibration=_calibration(session, model))
    if hook(session.objective, "after_method"):
        model = session.objective.after_method(model)
    trainable, total = count_trainable(model)
    console.print(f"method {r.method.name}: {trainable:,} of {total:,} parameters trainable "
                  f"({100 * trainable / total:.2f}%) on {session.device}")
    result = loop_train(model, session.seqs["train"], session.seqs["validation"], session.objective, r.train,
                        run.path, pad_id=session.tokenizer.pad_token_id, resume=resume, stop_after=stop_after,
                        on_eval=on_eval, on_step=on_step)
    info = {**result.__dict__, "trainable_parameters": trainable, "total_parameters": total,
            "token_stats": session.token_stats}
    atomic_write_json(run.path / "train.json", info)
    session.tuned_model = model
    if stop_after is not None and result.steps < _planned_steps(session):
        return run, result
    save_tuned(session.method, model, session.tokenizer, run.path / "model", session.objective)
    run.mark("train", steps=result.steps, wall_s=result.wall_s)
    _track(run)
    return run, result


def _calibration(session: _Session, model):
    """A function computing the objective's loss on one training batch (for data-aware methods)."""
    r = session.run.recipe
    items = session.seqs["train"][: r.train.batch_size]

    def loss(m):
        batch = session.objective.collate(items, session.tokenizer.pad_token_id)
        device = next(m.parameters()).device
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        out = session.objective(m, batch)
        return out.loss_sum / max(out.count, 1)
    return loss


def _planned_steps(session: _Session) -> int:
    from .train.loop import plan_micro_batches
    import math
    cfg = session.run.recipe.train
    return math.ceil(len(plan_micro_batches(len(session.seqs["train"]), cfg, session.seqs["train"]))
                     / cfg.grad_accum)


def _load_tuned(session: _Session):
    run = session.run
    if not (run.path / "model").is_dir():
        raise TunesmithError("run has no trained model; run `tunesmith train` first", file=str(run.path))
    model, _ = models.load(run.recipe.model.name, device=session.device)
    if hook(session.objective, "attach"):
        model = session.objective.attach(model, session.tokenizer, run.recipe)
    model = session.method.load(model, run.path / "model", run.recipe.method)
    if hook(session.objective, "load_extra"):
        model = session.objective.load_extra(model, run.path / "model")
    return model


def evaluate(target: str | Path | Run, *, session: _Session | None = None, base_result: dict | None = None,
             tuned_model=None) -> dict:
    """Evaluate base and tuned models on the test split; writes eval/*.json and the reports."""
    from .eval.evaluate import compare
    from .eval.report import write_reports
    run = _as_run(target)
    session = session or _Session(run)
    r = run.recipe
    if base_result is None and getattr(session, "tuned_model", None) is None:
        base_result = measure_base(session)      # the base weights are still untouched in this process
    elif base_result is None and r.eval.compare_base:
        base_result = run.load_json("eval/base.json")
    tuned_model = tuned_model or getattr(session, "tuned_model", None) or _load_tuned(session)
    tuned_result = _evaluate(session, tuned_model, "eval tuned", "tuned")
    atomic_write_json(run.path / "eval" / "tuned.json", tuned_result)
    if base_result:
        atomic_write_json(run.path / "eval" / "base.json", base_result)
    diff = compare(base_result, tuned_result, r, session.labels)
    decision = _decide(session, run, base_result, tuned_result, tuned_model)
    summary = {"base": _headline(base_result), "tuned": _headline(tuned_result), **diff,
               "systems": {row["system"]: row["metrics"] for row in decision["systems"]["rows"]},
               "recommendation": decision["recommendation"],
               "forgetting_flagged": bool((decision["forgetting"] or {}).get("flagged")),
               "contaminated": decision["contamination"]["contaminated"]}
    atomic_write_json(run.path / "eval" / "summary.json", summary)
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
                     "best_step": training.get("best_step"), "early_stopped": training.get("early_stopped"),
                     "trainable_parameters": training.get("trainable_parameters")},
        "artifacts": (run.load_json("export/export.json") or {}),
        **decision,
        "lengths": {name: [t.length for t in seqs] for name, seqs in session.seqs.items() if seqs},
        "max_length": r.data.max_length,
    }
    atomic_write_json(run.path / "eval" / "report_data.json", results)
    write_reports(run.path, results)
    run.mark("eval", tuned=summary["tuned"]["metrics"])
    _track(run)
    return summary


def _decide(session: _Session, run: Run, base_result, tuned_result, tuned_model) -> dict:
    """Baselines side by side with the tuned model, forgetting, contamination and the recommendation."""
    from .eval import contamination, decide, forgetting
    r = run.recipe
    baselines = run.load_json("eval/baselines.json") or {}
    results = {"base": base_result, "tuned": tuned_result,
               **{k: v for k, v in baselines.items() if k in ("few_shot", "rag")}}
    if "tuned_rag" in r.eval.baselines and not _baseline_skip_reason(session) and \
            r.objective.name != "classification":     # a label head does not read retrieved passages
        results["tuned_rag"] = _score_baseline(session, tuned_model, "tuned_rag", _baseline_tests(session))
        atomic_write_json(run.path / "eval" / "baselines.json", {**baselines, "tuned_rag": results["tuned_rag"]})
    table = decide.systems_table(results, r, session.labels, run.load_json("train.json"))
    forgot = None
    before = run.load_json("eval/forgetting_base.json")
    if before is not None:
        after = forgetting.measure(tuned_model, session.tokenizer, r, title="general (tuned)")
        forgot = forgetting.compare(before, after, r.forgetting.threshold)
        atomic_write_json(run.path / "eval" / "forgetting.json", {"before": before, "after": after,
                                                                  "comparison": forgot})
    exs, _ = session.eval_examples()
    contam = contamination.check(session.splits["train"], exs, r.eval.contamination_threshold)
    atomic_write_json(run.path / "eval" / "contamination.json", contam)
    return {"systems": table, "recommendation": decide.recommend(table, forgot), "forgetting": forgot,
            "contamination": contam, "baselines_skipped": baselines.get("skipped")}


def _headline(result: dict | None) -> dict | None:
    if not result:
        return None
    return {"metrics": result["metrics"], "loss": result["loss"]}


def export(target: str | Path | Run, *, session: _Session | None = None, tuned_model=None) -> dict:
    """Export the adapter and the merged model, with the parity check; re-renders the report."""
    from .export import export as _export
    run = _as_run(target)
    session = session or _Session(run)
    r = run.recipe
    model = tuned_model or getattr(session, "tuned_model", None) or _load_tuned(session)
    summary = run.load_json("eval/summary.json") or {}
    prompts = [ex.prompt_messages for ex in session.splits["test"] if ex.messages][: r.export.parity_prompts] \
        if r.export.check_parity else None
    result = _export(session.method, model, session.tokenizer, r, run.path, session.manifest, summary, prompts,
                     objective=session.objective)
    if r.export.gguf:
        if result.get("merged"):
            from .gguf_export import export_run_gguf
            result["gguf"] = export_run_gguf(run.path, r.export.gguf)
        else:
            console.print("[yellow]export.gguf skipped: needs a merged model (a mergeable method and "
                          "export.merged: true)[/yellow]")
            result["gguf"] = None
    atomic_write_json(run.path / "export" / "export.json", result)
    session.tuned_model = None   # merged in place; reload from disk if needed again
    data = run.load_json("eval/report_data.json")
    if data:
        from .eval.report import write_reports
        data["artifacts"] = result
        atomic_write_json(run.path / "eval" / "report_data.json", data)
        write_reports(run.path, data)
    run.mark("export", **{k: v for k, v in result.items() if k != "parity"})
    _track(run)
    return result


def run(recipe: str | Path | dict | Recipe, overrides: list[str] | None = None, *,
        resume_dir: str | Path | None = None, on_eval=None, on_step=None,
        evaluate_tuned: bool = True) -> Path:
    """validate -> prepare -> evaluate base -> train -> evaluate tuned -> export -> report.

    ``on_step(record)`` / ``on_eval(step, metrics)`` are called by the training loop; an exception
    from them (a cancelled job, a pruned trial) ends the run and propagates.
    """
    t0 = time.perf_counter()
    if resume_dir:
        the_run = _as_run(resume_dir)
    else:
        the_run = prepare(recipe, overrides)
    session = _Session(the_run)
    r = the_run.recipe
    base_result = measure_base(session)
    train(the_run, resume=bool(resume_dir), session=session, on_eval=on_eval, on_step=on_step)
    if not evaluate_tuned:       # sweeps judged on validation loss stop here
        the_run.mark("run", wall_s=time.perf_counter() - t0)
        _track(the_run)
        return the_run.path
    evaluate(the_run, session=session, base_result=base_result)
    export(the_run, session=session)
    session.base_model = session.tuned_model = None      # free memory before loading the artifacts again
    if r.export.verify:
        from .verify import verify_after_export
        res = verify_after_export(the_run.path, prompts=max(r.export.parity_prompts, 1))
        if res is not None:
            the_run.mark("verify", ok=res["ok"], compared=res["compared"])
    the_run.mark("run", wall_s=time.perf_counter() - t0)
    _track(the_run)
    return the_run.path
