"""Hyperparameter sweeps with Optuna: each trial a normal run, median pruning on validation loss, resumable."""
from __future__ import annotations

import itertools
import json
import math
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from .config import Recipe, SearchDim, find_setting, load_recipe, merge_settings
from .errors import TunesmithError
from .fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from .rundir import Layout, Run, is_run_dir
from .render import esc, figure, fmt, html_page, html_table, img_tag, png_bytes
from .runs import flatten

# Trials are judged on validation loss: the base model, baselines, forgetting checks and the full-size
# merged export are the same for every trial (or not needed), so trials skip them ...
TRIAL_SKIP = {"eval.compare_base": False, "eval.baselines": [], "forgetting.general_text": None,
              "forgetting.general_prompts": None}
# ... unless `sweep.evaluate`; trials never write merged models or GGUF files (the best one is rerun).
TRIAL_ALWAYS = {"export.merged": False, "export.verify": False, "export.gguf": []}
_RESERVED = ("name", "output_dir", "sweep", "tracking")
_LOSS_METRICS = ("val_loss", "perplexity")
PRUNER_STARTUP_TRIALS = 2          # completed trials before the median rule may prune


def default_direction(metric: str) -> str:
    return "minimize" if metric.endswith(("loss", "perplexity")) else "maximize"


# ------------------------------------------------------------------------------------ search space

def check_space(recipe: Recipe, label: str = "<recipe>") -> dict[str, SearchDim]:
    """Every search dimension names a recipe setting and each range end/choice is a valid value."""
    space = recipe.sweep.space
    if not space:
        raise TunesmithError("is empty; expected dotted recipe keys with ranges, e.g. "
                             "`train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}`",
                             file=label, field="sweep.space")
    raw = recipe.model_dump(mode="json")
    for key, dim in space.items():
        def bad(msg: str, key: str = key):
            return TunesmithError(msg, file=label, field=f"sweep.space.{key}")

        if key.split(".")[0] in _RESERVED:
            raise bad(f"'{key}' cannot be swept; expected a key in model, data, method, objective, train, eval, "
                      "export or forgetting")
        _, why = find_setting(key, recipe)
        if why:
            raise bad(why)
        if dim.type == "categorical":
            if any(not isinstance(c, (str, int, float, bool, type(None))) for c in dim.choices):
                raise bad("categorical choices must be numbers, strings, booleans or null")
            samples = list(dim.choices)
        else:
            if dim.log and dim.low <= 0:
                raise bad(f"log scale needs low > 0 (got low={dim.low})")
            if dim.log and dim.step:
                raise bad("`log` and `step` cannot be combined; expected one of them")
            if dim.step is not None and dim.step <= 0:
                raise bad(f"step must be > 0 (got {dim.step})")
            if dim.type == "int":
                for name in ("low", "high", "step"):
                    v = getattr(dim, name)
                    if v is not None and float(v) != int(v):
                        raise bad(f"int range needs whole numbers; got {name}={v}")
                samples = [int(dim.low), int(dim.high)]
            else:
                samples = [float(dim.low), float(dim.high)]
        for value in samples:
            trial_raw = merge_settings(json.loads(json.dumps(raw)), {key: value})
            try:
                Recipe.model_validate(trial_raw)
            except ValidationError as e:          # say which value, not the whole recipe dump
                detail = e.errors()[0]["msg"]
                raise bad(f"value {value!r} from the range is not valid for '{key}': {detail}") from None
    return dict(space)


def _suggest(trial, key: str, dim: SearchDim):
    if dim.type == "categorical":
        return trial.suggest_categorical(key, list(dim.choices))
    if dim.type == "int":
        return trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


# ------------------------------------------------------------------------------------ the sweep

@contextmanager
def _exclusive(sweep_dir: Path):
    """One sweep process per sweep folder (the lock dies with a killed process)."""
    try:
        import fcntl
    except ImportError:           # not POSIX: no lock
        yield
        return
    f = open(sweep_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TunesmithError("another sweep is running on this folder; wait for it or stop it",
                                 file=str(sweep_dir)) from None
        yield
    finally:
        f.close()


def make_on_eval(trial, sign: float = 1.0):
    """Training-loop callback: report validation loss to the trial and stop it when the pruner says so.

    ``sign`` is -1 when the study maximises (the pruner then compares negated losses).
    """
    import optuna

    def on_eval(step: int, metrics: dict) -> None:
        value = metrics.get("val_loss")
        if value is None:
            return
        on_eval.last_step = step
        trial.report(sign * float(value), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (val_loss {float(value):.4f})")
    on_eval.last_step = None
    return on_eval


def _objective_value(run_dir: Path, metric: str, evaluate: bool) -> float:
    run = Layout(run_dir)
    train = run.load_json("train.json") or {}
    best = train.get("best_val_loss")
    if metric in _LOSS_METRICS:
        if best is None:
            raise TunesmithError("the trial has no validation loss; expected a validation split "
                                 "(data.split.validation > 0 or data.validation)", field="sweep.metric")
        return float(best) if metric == "val_loss" else math.exp(min(float(best), 700.0))
    tuned = (run.load_json("eval/summary.json") or {}).get("tuned") or {}
    values = {**(tuned.get("loss") or {}), **(tuned.get("metrics") or {})}
    if metric not in values:
        raise TunesmithError(f"'{metric}' is not among the tuned model's metrics; expected one of: "
                             f"{', '.join(sorted(values)) or '(none)'}", field="sweep.metric")
    return float(values[metric])


def _recover(study, log) -> None:
    """Trials a killed (left RUNNING) or interrupted (Ctrl-C) sweep left behind are marked failed and
    queued again with the same parameters; a retry continues the old run from its last checkpoint."""
    from optuna.trial import TrialState
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for t in study.trials:
        if t.number in retried or not (t.state == TrialState.RUNNING or
                                       (t.state == TrialState.FAIL and t.user_attrs.get("interrupted"))):
            continue
        if t.state == TrialState.RUNNING:   # one sweep per folder (locked): nobody else is running it
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        attrs = {"retry_of": t.number}
        if t.user_attrs.get("run_dir"):
            attrs["resume_run"] = t.user_attrs["run_dir"]
        study.enqueue_trial(t.params, user_attrs=attrs)
        log(f"trial {t.number} was interrupted: queued again with the same parameters")


def _checkpoint_step(run_dir: Path) -> int | None:
    from .train import checkpoint
    return checkpoint.latest_step(Layout(run_dir).checkpoints) if is_run_dir(run_dir) else None


class _Objective:
    def __init__(self, recipe: Recipe, sweep_dir: Path, space: dict, direction: str, log):
        self.recipe, self.sweep_dir, self.space, self.log = recipe, sweep_dir, space, log
        self.cfg = recipe.sweep
        self.sign = -1.0 if direction == "maximize" else 1.0

    def trial_recipe(self, number: int, params: dict) -> Recipe:
        raw = self.recipe.model_dump(mode="json")
        fixed = {**({} if self.cfg.evaluate else TRIAL_SKIP), **TRIAL_ALWAYS, **params}
        raw = merge_settings(raw, fixed)
        raw["name"] = f"{self.recipe.name}-t{number:03d}"
        raw["output_dir"] = str(self.sweep_dir / "trials")
        raw["tracking"]["experiment"] = self.recipe.tracking.experiment or self.recipe.name
        return load_recipe(raw)

    def track(self, run_dir: Path) -> None:
        """Log the trial to MLflow/TensorBoard (idempotent; pruned trials too). A tracking failure is
        reported and the sweep goes on."""
        cfg = self.recipe.tracking
        if not (cfg.mlflow or cfg.tensorboard):
            return
        from .tracking import log_run
        try:
            log_run(run_dir, cfg.model_copy(update={"experiment": cfg.experiment or self.recipe.name}))
        except TunesmithError as e:
            self.log(f"[yellow]tracking skipped for {run_dir.name}: {e}")

    def __call__(self, trial) -> float:
        import optuna

        from . import pipeline
        params = {key: _suggest(trial, key, dim) for key, dim in self.space.items()}
        on_eval = make_on_eval(trial, self.sign)
        resume = trial.user_attrs.get("resume_run")
        step = _checkpoint_step(Path(resume)) if resume else None
        try:
            if step:
                run_dir = Path(resume)
                trial.set_user_attr("run_dir", str(run_dir))
                for rec in Layout(run_dir).metrics():   # what the pruner saw before the kill
                    if rec.get("type") == "eval" and rec.get("step", 0) <= step and "val_loss" in rec:
                        trial.report(self.sign * float(rec["val_loss"]), rec["step"])
                        on_eval.last_step = rec["step"]
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {on_eval.last_step}")
                self.log(f"trial {trial.number}: continuing {run_dir} from step {step}")
                pipeline.run(None, resume_dir=run_dir, on_eval=on_eval, evaluate_tuned=self.cfg.evaluate)
            else:
                r = self.trial_recipe(trial.number, params)
                prepared = pipeline.prepare(r)
                trial.set_user_attr("run_dir", str(prepared.path))
                self.log(f"trial {trial.number}: {_fmt_params(params)}")
                run_dir = pipeline.run(prepared, on_eval=on_eval, evaluate_tuned=self.cfg.evaluate)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except optuna.TrialPruned:
            run_dir = Path(trial.user_attrs["run_dir"])
            if is_run_dir(run_dir):      # `runs list` shows it as pruned, not interrupted
                Run(run_dir).mark("pruned", trial=trial.number, step=on_eval.last_step)
                self.track(run_dir)
            raise
        self.track(Path(run_dir))
        value = _objective_value(Path(run_dir), self.cfg.metric, self.cfg.evaluate)
        self.log(f"trial {trial.number}: {self.cfg.metric} = {value:.6g}")
        return value


def _fmt_params(params: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _open_study(recipe: Recipe, sweep_dir: Path, direction: str, space: dict, label: str, log):
    import optuna
    from optuna.pruners import MedianPruner, NopPruner
    from optuna.samplers import TPESampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = recipe.sweep
    storage = f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    study = optuna.create_study(study_name=recipe.name, storage=storage, load_if_exists=True,
                                direction=direction)
    space_json = {k: v.model_dump(mode="json") for k, v in space.items()}
    known = study.user_attrs
    fixed = {k: v for k, v in flatten(recipe.model_dump(mode="json")).items() if not k.startswith("sweep.")}
    if not known:
        study.set_user_attr("space", space_json)
        study.set_user_attr("metric", cfg.metric)
        study.set_user_attr("recipe", fixed)
    elif known.get("space") != space_json or known.get("metric") != cfg.metric or \
            study.direction.name.lower() != direction:
        raise TunesmithError(f"{sweep_dir} holds a study with a different sweep.space, metric or direction; "
                             "expected the same settings to continue it (or a new recipe name)",
                             file=label, field="sweep")
    else:
        before = known.get("recipe") or {}
        changed = sorted(k for k in set(before) | set(fixed) if before.get(k) != fixed.get(k))
        if changed:
            log(f"[yellow]warning: the recipe differs from the one this study started with ({', '.join(changed)}); "
                "trials run with different settings are compared as if they were alike")
    n_trials = max(cfg.trials, 1)
    study.sampler = TPESampler(seed=cfg.seed + len(study.trials),     # a continued sweep draws new points
                               n_startup_trials=max(3, min(10, n_trials // 2)))
    study.pruner = MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0) if cfg.pruning \
        else NopPruner()
    return study


def _finished(study) -> int:
    from optuna.trial import TrialState
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def sweep(recipe: str | Path | dict | Recipe, overrides: list[str] | None = None, *,
          trials: int | None = None) -> dict:
    """Run (or continue) an Optuna sweep over ``recipe.sweep.space`` until ``trials`` trials are
    complete or pruned; writes ``<output_dir>/<name>-sweep/`` (study.db, trials/, sweep.json,
    sweep.html, plots) and returns the summary."""
    from .train.progress import console
    label = "<recipe>" if isinstance(recipe, (dict, Recipe)) else str(recipe)
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    cfg = r.sweep
    if trials is not None:
        if trials < 1:
            raise TunesmithError(f"--trials must be at least 1 (got {trials})", field="sweep.trials")
        r = r.model_copy(update={"sweep": cfg.model_copy(update={"trials": trials})})
        cfg = r.sweep
    space = check_space(r, label)
    direction = cfg.direction or default_direction(cfg.metric)
    if cfg.metric not in _LOSS_METRICS and not cfg.evaluate:
        raise TunesmithError(f"'{cfg.metric}' is a task metric and needs an evaluation of every trial; expected "
                             "sweep.evaluate: true (or metric val_loss)", file=label, field="sweep.metric")
    if cfg.metric in _LOSS_METRICS and r.data.split.validation == 0 and not r.data.validation:
        raise TunesmithError("sweeps on validation loss need a validation split; expected "
                             "data.split.validation > 0 or data.validation", file=label, field="data.split")
    sweep_dir = Path(r.output_dir) / f"{r.name}-sweep"
    try:
        (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TunesmithError(f"cannot create the sweep folder ({e.strerror}); expected a writable output_dir",
                             file=str(sweep_dir)) from None

    def log(msg: str) -> None:
        console.print(f"[bold magenta]sweep[/] {msg}")

    with _exclusive(sweep_dir):
        study = _open_study(r, sweep_dir, direction, space, label, log)
        _recover(study, log)
        objective = _Objective(r, sweep_dir, space, direction, log)
        done = _finished(study)
        if done:
            log(f"continuing: {done} of {cfg.trials} trials already finished")
        while _finished(study) < cfg.trials:
            study.optimize(objective, n_trials=1, gc_after_trial=True)
        summary = summarize(study, r, sweep_dir, label, list(overrides or []))
    log(f"summary: {sweep_dir / 'sweep.json'}  report: {sweep_dir / 'sweep.html'}")
    return summary


# ------------------------------------------------------------------------------------ summary

def _trial_rows(study) -> list[dict]:
    from optuna.trial import TrialState
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    rows = []
    for t in study.trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        steps = sorted(t.intermediate_values)
        rows.append({"number": t.number, "state": t.state.name,
                     "value": t.value if t.state == TrialState.COMPLETE else None, "params": t.params,
                     "run_dir": t.user_attrs.get("run_dir"), "duration_s": duration,
                     "last_step": steps[-1] if steps else None,
                     "last_val_loss": sign * t.intermediate_values[steps[-1]] if steps else None,
                     "retry_of": t.user_attrs.get("retry_of")})
    return rows


def reproduce_command(label: str, overrides: list[str], params: dict) -> str:
    """The `tunesmith run` command line that trains the best configuration with the full pipeline."""
    args = ["tunesmith", "run", label if label != "<recipe>" else "RECIPE.yaml"]
    args += [o for o in overrides if not o.startswith("sweep.")]
    args += [f"{k}={json.dumps(v) if isinstance(v, (bool, type(None))) else v!r}"
             if not isinstance(v, str) else f"{k}={v}" for k, v in params.items()]
    return " ".join(shlex.quote(a) for a in args)


def summarize(study, recipe: Recipe, sweep_dir: Path, label: str = "<recipe>",
              overrides: list[str] | None = None) -> dict:
    """Write sweep.json, the PNG plots and sweep.html; return the summary."""
    from optuna.trial import TrialState
    cfg = recipe.sweep
    rows = _trial_rows(study)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params, "run_dir": b.user_attrs.get("run_dir"),
                "command": reproduce_command(label, overrides or [], b.params)}
    counts = {s.name: sum(t.state == s for t in study.trials) for s in TrialState}
    plots, notes = {}, []
    for name, make in (("history", history_png), ("importance", importance_png),
                       ("intermediate", intermediate_png)):
        try:
            png, note = make(study, cfg.metric)
        except Exception as e:                   # a plot must never lose the sweep's results
            png, note = None, f"{name} plot failed: {e}"
        if png:
            atomic_write_bytes(sweep_dir / f"{name}.png", png)
            plots[name] = str(sweep_dir / f"{name}.png")
        if note:
            notes.append(note)
    summary = {"name": recipe.name, "recipe": label, "overrides": overrides or [], "study": str(sweep_dir / "study.db"),
               "metric": cfg.metric, "direction": study.direction.name.lower(), "trials_requested": cfg.trials,
               "counts": {k: v for k, v in counts.items() if v}, "best": best,
               "importance": _importances(study), "trials": rows, "plots": plots, "notes": notes,
               "space": {k: v.model_dump(mode="json", exclude_none=True) for k, v in cfg.space.items()},
               "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(sweep_dir / "sweep.json", summary)
    atomic_write_text(sweep_dir / "sweep.html", sweep_html(summary))
    return summary


def _importances(study) -> dict | None:
    """Parameter importances, or None with fewer than two complete trials of differing parameters."""
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    distinct = {json.dumps(t.params, sort_keys=True) for t in complete}
    if len(complete) < 2 or len(distinct) < 2:
        return None
    try:
        return {k: float(v) for k, v in get_param_importances(study).items()}
    except Exception:       # e.g. every trial has the same value
        return None


def history_png(study, metric: str):
    """Objective value per trial with the best-so-far line; pruned trials at their last validation loss."""
    from optuna.trial import TrialState
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        return None, "no complete trial yet: no optimisation history"
    fig = figure()
    ax = fig.add_subplot()
    xs, ys = [t.number for t in done], [t.value for t in done]
    ax.scatter(xs, ys, color="#0969da", zorder=3, label=f"{metric} (complete)")
    running = list(itertools.accumulate(ys, min if study.direction.name == "MINIMIZE" else max))
    ax.step(xs, running, where="post", color="#cf222e", label="best so far")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned and metric == "val_loss":
        sign = -1 if study.direction.name == "MAXIMIZE" else 1
        ax.scatter([t.number for t in pruned], [sign * t.intermediate_values[max(t.intermediate_values)]
                                                 for t in pruned],
                   marker="x", color="#6e7781", zorder=3, label="pruned (last validation)")
    ax.set_xlabel("trial")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig), None


def importance_png(study, metric: str):
    imp = _importances(study)
    if not imp:
        return None, "parameter importance needs at least two complete trials with different parameters"
    fig = figure(7, max(1.8, 0.6 + 0.45 * len(imp)))
    ax = fig.add_subplot()
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="#0969da")
    ax.set_xlabel(f"importance for {metric}")
    return png_bytes(fig), None


def intermediate_png(study, metric: str):
    """Validation loss by step of every trial; pruned trials dashed."""
    from optuna.trial import TrialState
    trials = [t for t in study.trials if t.intermediate_values]
    if not trials:
        return None, None
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    fig = figure()
    ax = fig.add_subplot()
    for t in trials:
        steps = sorted(t.intermediate_values)
        pruned = t.state == TrialState.PRUNED
        ax.plot(steps, [sign * t.intermediate_values[s] for s in steps], linestyle="--" if pruned else "-",
                marker="o", markersize=3, alpha=0.6 if pruned else 0.9,
                label=f"t{t.number}{' (pruned)' if pruned else ''}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    if len(trials) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return png_bytes(fig), None


def sweep_html(summary: dict) -> str:
    best = summary["best"]
    parts = [f"<h1>Sweep: {esc(summary['name'])}</h1>",
             (f"<p class='meta'>{summary['direction']} {esc(summary['metric'])} over "
              f"{', '.join(esc(k) for k in summary['space'])}; trials: "
              f"{', '.join(f'{v} {k.lower()}' for k, v in summary['counts'].items())} "
              f"(requested {summary['trials_requested']}). Study: {esc(summary['study'])}</p>")]
    if best:
        parts += ["<h2>Best trial</h2>",
                  html_table(["", "value"], [["trial", best["number"]], [summary["metric"], best["value"]],
                                             *[[k, v] for k, v in best["params"].items()],
                                             ["run directory", best["run_dir"]]]),
                  f"<p>Reproduce with the full pipeline:<br><code>{esc(best['command'])}</code></p>"]
    header = ["trial", "state", summary["metric"], *summary["space"], "duration (s)", "run directory"]
    rows = [[str(t["number"]), t["state"].lower() + (f" at step {t['last_step']}" if t["state"] == "PRUNED" else ""),
             t["value"], *[t["params"].get(k) for k in summary["space"]],
             t["duration_s"], t["run_dir"]] for t in summary["trials"]]
    parts += ["<h2>Trials</h2>", html_table(header, rows)]
    titles = {"history": "Optimisation history", "importance": "Parameter importance",
              "intermediate": "Validation loss of each trial"}
    for name, path in summary["plots"].items():
        parts += [f"<h2>{titles[name]}</h2>", img_tag(Path(path).read_bytes(), titles[name])]
    for note in summary["notes"]:
        parts.append(f"<p class='meta'>{esc(note)}</p>")
    return html_page(f"sweep {summary['name']}", parts)


def print_summary(summary: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    c = console or Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    t = Table(title=f"sweep {summary['name']}: {summary['direction']} {summary['metric']}")
    for col in ("trial", "state", summary["metric"], *summary["space"], "time", "run"):
        t.add_column(col, no_wrap=col == "run")
    best = (summary["best"] or {}).get("number")
    for row in summary["trials"]:
        style = "bold green" if row["number"] == best else ("dim" if row["state"] != "COMPLETE" else None)
        value = fmt(row["value"]) if row["state"] != "PRUNED" else f"(step {row['last_step']})"
        t.add_row(str(row["number"]), row["state"].lower(), value,
                  *[fmt(row["params"].get(k)) for k in summary["space"]],
                  f"{row['duration_s']:.0f}s" if row["duration_s"] is not None else "—",
                  Path(row["run_dir"]).name if row["run_dir"] else "—", style=style)
    c.print(t)
    if summary["best"]:
        b = summary["best"]
        c.print(f"best: trial {b['number']}  {summary['metric']} {fmt(b['value'])}  ({b['run_dir']})")
        c.print(f"reproduce: {b['command']}")
    for note in summary["notes"]:
        c.print(f"note: {note}")
    c.print(f"report: {Path(summary['study']).parent / 'sweep.html'}")


__all__ = ["TRIAL_ALWAYS", "TRIAL_SKIP", "check_space", "default_direction", "make_on_eval", "print_summary",
           "reproduce_command", "summarize", "sweep"]
