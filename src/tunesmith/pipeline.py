"""The stages in sequence over a run directory: validate, prepare, train, evaluate, export, run."""
from __future__ import annotations

import gc
import math
import time
from contextlib import nullcontext
from pathlib import Path

from . import models
from .config import Recipe, load_recipe
from .data import prepare as data_prepare
from .errors import TunesmithError
from .fsutil import atomic_write_json
from .objectives.base import hook
from .rundir import Run, as_run
from .session import Session
from .train.progress import console


def _check_label_set(recipe: Recipe, manifest: dict, splits: dict) -> None:
    """Accuracy is measured over a label set: declared (data.labels) or inferred from the answers.
    Without one, stop before any compute (not after the base model's evaluation); so does data the
    objective cannot train on (its ``check_data``)."""
    from . import objectives
    objective = objectives.OBJECTIVES.get(recipe.objective.name)
    check = hook(objective, "check_data")
    if check and not manifest.get("tasks"):
        check(splits)
    own_eval = callable(getattr(objective, "evaluate", None))
    if "accuracy" not in recipe.metrics() or own_eval or manifest.get("tasks"):
        return
    if not (manifest.get("labels") or manifest.get("inferred_labels")):
        raise TunesmithError(f"task {recipe.task} measures accuracy over a label set, but none was given "
                             "(data.labels) and the answers are not a small set of short labels to infer "
                             "one from; set data.labels, or eval.metrics (e.g. [exact_match])",
                             field="data.labels")


def _say_removals(manifest: dict) -> None:
    """One line on what cleaning removed (per split and reason), and the data warnings (label coverage,
    overlaps of a given test file with training)."""
    line = data_prepare.removal_summary(manifest)
    if line:
        console.print(line)
    for warning in data_prepare.data_warnings(manifest):
        console.print(f"[yellow]warning: {warning}[/yellow]")


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


def _recipe(recipe: str | Path | dict | Recipe, overrides: list[str] | None) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)


def _is_recipe(target) -> bool:
    return isinstance(target, (Recipe, dict)) or str(target).endswith((".yaml", ".yml"))


def _failing(run: Run, stage: str):
    """Context: an error inside ``stage`` marks the run failed (with the reason) before it propagates."""
    class _Mark:
        def __enter__(self):
            return run

        def __exit__(self, kind, exc, tb):
            if exc is not None and not isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
                try:
                    run.mark("failed", during=stage, error=str(exc).splitlines()[0] if str(exc) else kind.__name__)
                except OSError:
                    pass
            return False
    return _Mark()


# ---- stages -------------------------------------------------------------------------------------

def validate(path: str, recipe: str | Path | dict | Recipe | None = None, overrides: list[str] | None = None,
             out: str | Path | None = None, with_tokens: bool = True) -> dict:
    """Validate a data file over its whole length; returns (and optionally saves) the report."""
    from .config import DataConfig
    from .data.validate import save_report, validate as validate_file
    cfg = _recipe(recipe, overrides) if recipe is not None else None
    data_cfg = cfg.data.model_copy(update={"train": path}) if cfg else DataConfig(train=path)
    tok = None
    if with_tokens:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(models.resolve(cfg.model.name if cfg else "smollm2-135m-instruct"))
    report = validate_file(data_cfg, path, tok)
    if out:
        save_report(report, Path(out))
    return report


def prepare(recipe: str | Path | dict | Recipe, overrides: list[str] | None = None) -> Run:
    """Create a run directory and write its preprocessed, split data with a manifest.

    Everything that can fail on the user's input (recipe, model, data) is checked before the folder
    is created, so a failed command leaves no half-made run.
    """
    recipe = _recipe(recipe, overrides)
    if recipe.model.from_:    # a continuation needs its parent's adapter, replay and registration: never a plain run
        raise TunesmithError(f"model.from {recipe.model.from_} continues a registered version: start it with "
                             "`tunesmith run RECIPE` or tunesmith.lifecycle.continuation.continue_from_recipe(); "
                             "pipeline.prepare/run train from model.name", field="model.from")
    models.resolve(recipe.model.name)     # fail early on an unknown model
    models.check_max_length(recipe.model.name, recipe.data.max_length)
    splits, manifest = data_prepare.build_splits(recipe)
    _check_label_set(recipe, manifest, splits)
    run = Run.create(recipe)
    with _failing(run, "prepare"):
        data_prepare.save_splits(run.data_dir, splits, manifest)
        run.mark("prepare", counts=manifest["counts"])
    _say_removals(manifest)
    console.print(f"prepared data: {manifest['counts']}  ->  {run.data_dir}")
    from . import objectives
    if not objectives.OBJECTIVES[recipe.objective.name].generates_text:
        console.print(f"objective {recipe.objective.name}: the tuned model predicts labels with its own head instead "
                      "of answering in text (no merged model or GGUF files; objective.name: sft trains text answers)")
    return run


def train(target: str | Path | Run | Recipe, overrides: list[str] | None = None, *, resume: bool = False,
          session: Session | None = None, stop_after: int | None = None, on_eval=None, on_step=None):
    """Train on a prepared run (or prepare one from a recipe first); saves ``model/``."""
    from .export import save_tuned
    from .methods.base import count_trainable
    from .train.loop import train as loop_train
    from .tuned import prepare_for_training, rebuilt
    from .train import distributed, fsdp
    from .train.loop import TrainResult
    from .eval.select import task_score
    run = prepare(target, overrides) if _is_recipe(target) else as_run(target)
    if resume and not (run.checkpoints.is_dir() or run.metrics_path.is_file()):
        raise TunesmithError("nothing to resume: the run has not started training", file=str(run.path))
    if not resume and run.model_dir.exists():
        raise TunesmithError("run already trained; start a new run or use --resume", file=str(run.path))
    r = run.recipe
    distributed.check_settings(r.train, callbacks=bool(on_eval or on_step or stop_after), continuing=r.continue_)
    if r.train.nproc > 1 and not distributed.in_rank_process():      # the ranks train; this process waits
        with _failing(run, "train"):
            distributed.launch(run.path, r.train.nproc, resume=resume, threads=r.train.threads)
        if session is not None:
            session.tuned_model = None        # evaluation loads what rank 0 saved
        info = run.load_json("train.json") or {}
        _track(run)
        return run, TrainResult(**{k: info.get(k) for k in TrainResult.__dataclass_fields__})
    ranks = distributed.current()
    with _failing(run, "train") if ranks.main else nullcontext():
        session = session or Session(run)
        base, calibration, seqs = session.base_model, session.calibration(), session.seqs
        t_prep = time.perf_counter()        # the model's preparation (e.g. a new head's probe) counts in a budget
        model = prepare_for_training(base, session.method, session.objective, r, session.tokenizer,
                                     calibration=calibration, seqs=seqs)
        prep_s = time.perf_counter() - t_prep
        trainable, total = count_trainable(model)
        console.print(f"method {r.method.name}: {trainable:,} of {total:,} parameters trainable "
                      f"({100 * trainable / total:.2f}%) on {session.device}")
        score = task_score(session)
        if score is not None and r.train.strategy == "fsdp" and ranks.distributed:
            score = None       # answers generated by sharded ranks would have to stay in lockstep: not yet
            if ranks.main:
                console.print("checkpoints chosen on validation loss: task-metric selection does not combine with "
                              "train.strategy fsdp in this version")
        if score is not None and ranks.main:
            console.print(f"checkpoints chosen on {score.describe()} (train.select_on {r.train.select_on})")
        result = loop_train(model, session.seqs["train"], session.seqs["validation"], session.objective, r.train,
                            run.path, pad_id=session.tokenizer.pad_token_id, resume=resume, stop_after=stop_after,
                            on_eval=on_eval, on_step=on_step, task_score=score, spent_s=0.0 if resume else prep_s)
        if (result.distributed or {}).get("strategy") == "fsdp":   # each rank holds parts: rank 0 saves a whole
            weights = fsdp.whole_trainable_state(model)            # copy (every rank takes part in gathering)
            model = base = session.base_model = None               # this rank's parts freed before a whole copy
            gc.collect()                                           # is loaded (FSDP's state holds cycles)
            model = rebuilt(r, session.method, session.objective, session.tokenizer, weights, session.device,
                            calibration=calibration) if ranks.main else None
        session.tuned_model = model
        if not ranks.main:            # rank 0 writes train.json and the model
            return run, result
        notes = hook(session.objective, "training_notes")
        info = {**result.__dict__, "trainable_parameters": trainable, "total_parameters": total,
                # the stage's whole cost (preparation, steps, validations, saves); a resumed run knows its
                # earlier calls' steps only, so at least every call's steps
                "stage_s": round(max(time.perf_counter() - t_prep, result.wall_s), 3),
                "token_stats": session.token_stats, "objective_notes": notes() if notes else None}
        atomic_write_json(run.train_json, info)
        if stop_after is not None and result.steps < (result.total_steps or planned_steps(session)):
            return run, result
        save_tuned(session.method, model, session.tokenizer, run.model_dir, session.objective)
        budget = result.time_budget
        run.mark("train", steps=result.steps, wall_s=result.wall_s, precision=(result.precision or {}).get("used"),
                 **({"time_budget_s": budget["budget_s"], "planned_steps": budget["planned_steps"],
                     "budget_actual_s": budget["actual_s"]} if budget else {}))
        if budget:
            console.print(f"time budget {budget['budget_s']:.0f}s: trained {result.steps} of {budget['natural_steps']} "
                          f"possible steps in {budget['actual_s']:.0f}s")
    _track(run)
    return run, result


def planned_steps(session: Session) -> int:
    """Optimizer steps the recipe's schedule plans for this run's training data."""
    from .train.loop import plan_micro_batches
    cfg = session.run.recipe.train
    return math.ceil(len(plan_micro_batches(len(session.seqs["train"]), cfg, session.seqs["train"]))
                     / cfg.grad_accum)


def evaluate(target: str | Path | Run, *, session: Session | None = None, base_result: dict | None = None,
             tuned_model=None) -> dict:
    """Evaluate base and tuned models on the test split; writes eval/*.json and the reports."""
    from .eval import stage
    run = as_run(target)
    if session is None and tuned_model is None and not run.model_dir.is_dir():
        raise TunesmithError("run has no trained model; run `tunesmith train` first", file=str(run.path))
    with _failing(run, "eval"):
        session = session or Session(run)
        summary = stage.evaluate(session, base_result=base_result, tuned_model=tuned_model)
    _track(run)
    return summary


def export(target: str | Path | Run, *, session: Session | None = None, tuned_model=None) -> dict:
    """Export the adapter and the merged model, with the parity check; re-renders the report."""
    from .export import export as export_model
    run = as_run(target)
    if session is None and tuned_model is None and not run.model_dir.is_dir():
        raise TunesmithError("run has no trained model; run `tunesmith train` first", file=str(run.path))
    with _failing(run, "export"):
        session = session or Session(run)
        r = run.recipe
        model = tuned_model or session.load_tuned()
        summary = run.load_json("eval/summary.json") or {}
        prompts = [ex.prompt_messages for ex in session.splits["test"] if ex.messages][: r.export.parity_prompts] \
            if r.export.check_parity else None
        result = export_model(session.method, model, session.tokenizer, r, run.path, session.manifest, summary,
                              prompts, objective=session.objective)
        if r.export.gguf:
            if result.get("merged"):
                from .gguf_export import export_run_gguf
                result["gguf"] = export_run_gguf(run.path, r.export.gguf)
            else:
                console.print("[yellow]export.gguf skipped: needs a merged model (a mergeable method and "
                              "export.merged: true)[/yellow]")
                result["gguf"] = None
        atomic_write_json(run.export_json, result)
        session.tuned_model = None   # merged in place; reload from disk if needed again
        data = run.load_json("eval/report_data.json")
        if data:
            from .eval.report import write_reports
            data["artifacts"] = result
            atomic_write_json(run.eval_dir / "report_data.json", data)
            write_reports(run.path, data)
        run.mark("export", **{k: v for k, v in result.items() if k != "parity"})
    _track(run)
    return result


def run(recipe: str | Path | dict | Recipe | Run | None, overrides: list[str] | None = None, *,
        resume_dir: str | Path | None = None, on_eval=None, on_step=None,
        evaluate_tuned: bool = True, after_export=None) -> Path:
    """validate -> prepare -> evaluate base -> train -> evaluate tuned -> export -> report.

    ``on_step(record)`` / ``on_eval(step, metrics)`` are called by the training loop; an exception
    from them (a cancelled job, a pruned trial) ends the run and propagates. ``after_export(run)``
    runs last (the CLI passes the live-server parity check); from Python no server is started.
    """
    from .eval import stage
    t0 = time.perf_counter()
    if resume_dir:
        the_run = as_run(resume_dir)
        if the_run.status() == "complete":
            raise TunesmithError("this run is finished; nothing to resume (start a new run to train again)",
                                 file=str(the_run.path))
        if not (the_run.checkpoints.is_dir() or the_run.metrics_path.is_file()):   # before any base evaluation
            raise TunesmithError("nothing to resume: the run has not started training; train it with "
                                 f"`tunesmith train {the_run.path}`", file=str(the_run.path))
    elif isinstance(recipe, Run):      # prepared already (the caller needed its folder first)
        the_run = recipe
    else:
        the_run = prepare(recipe, overrides)
    with _failing(the_run, "run"):
        session = Session(the_run)
        if resume_dir:
            _say_removals(session.manifest)
        base_result = stage.measure_base(session)
    train(the_run, resume=bool(resume_dir), session=session, on_eval=on_eval, on_step=on_step)
    if not evaluate_tuned:       # sweeps judged on validation loss stop here
        the_run.mark("run", wall_s=time.perf_counter() - t0)
        _track(the_run)
        return the_run.path
    evaluate(the_run, session=session, base_result=base_result)
    export(the_run, session=session)
    session.base_model = session.tuned_model = None      # free memory before loading the artifacts again
    if after_export is not None:
        with _failing(the_run, "verify"):
            after_export(the_run)
    the_run.mark("run", wall_s=time.perf_counter() - t0)
    _track(the_run)
    return the_run.path


__all__ = ["validate", "prepare", "train", "evaluate", "export", "run", "planned_steps", "Run", "Session"]
