"""Quality per CPU-minute on public tasks of different shapes: tunesmith's defaults, tunesmith's advised
configuration and TRL's SFTTrainer with the same training budget, beside zero-shot, few-shot and RAG.

For every task (see ``quality_tasks.py``) the bench writes train/test files, then

* ``defaults`` -- ``tunesmith run`` with the task's data section and ``train.time_budget`` (everything
  else tunesmith's defaults); this run also measures the base model zero-shot, few-shot (k similar
  training examples in the prompt), RAG, the tuned model with retrieved neighbours, and label-safe rows;
* ``advised`` -- ``tunesmith advise`` on the same recipe, then a run with the method it recommends (when
  that is the default configuration, the defaults row stands for it and the table says so);
* ``trl`` -- TRL ``SFTTrainer`` + peft ``LoraConfig`` with their documented defaults, stopped when the
  budget is spent, on the same prepared training examples; evaluated by tunesmith on the same test set;
* ``trl_cpu`` -- the same with the settings an expert would pick for a CPU (see ``quality_trl.py``).

Each system runs in its own process. Prints one JSON object and writes the markdown table. Every metric
has its 95% paired-bootstrap interval; ``vs_defaults`` is each system minus tunesmith's defaults on the
same items with its interval (a system is beaten when the interval lies wholly below zero).

    .venv/bin/python bench/quality.py                                  # 4 tasks, 10-minute budget (hours)
    .venv/bin/python bench/quality.py --tasks router --budget 2m --systems defaults,trl --test 100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality_tasks import TASKS, Unavailable  # noqa: E402
from train_throughput import cpu_model  # noqa: E402

MODEL = "smollm2-135m-instruct"
SYSTEM_LABELS = {
    "majority": "majority class", "base": "zero-shot", "base_label_safe": "zero-shot, label-safe",
    "few_shot": "few-shot (similar examples)", "rag": "RAG", "tuned": "tunesmith defaults",
    "tuned_label_safe": "tunesmith defaults, label-safe", "tuned_rag": "tunesmith defaults + neighbours",
    "advised": "tunesmith advised", "trl": "TRL SFTTrainer defaults", "trl_cpu": "TRL, CPU settings",
}


def recipe_for(task, folder: Path, budget: str, test: int) -> dict:
    data = {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl"),
            "split": {"validation": 0.05, "seed": 0}, **task.data}
    metrics = ["rouge", "exact_match"] if task.task in ("qa", "summarization") else "auto"
    return {"name": f"q-{task.name}", "task": task.task, "model": {"name": MODEL}, "data": data,
            "output_dir": str(folder / "runs"), "train": {"time_budget": budget},
            "eval": {"max_new_tokens": task.max_new_tokens, "batch_size": 16, "metrics": metrics,
                     "baselines": ["few_shot", "rag", "tuned_rag"], "baseline_examples": test,
                     "max_examples": test},
            "export": {"merged": False, "gguf": []}}


def _child(code: str, args: list[str], log: Path, timeout: float) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    with open(log, "a") as fh:
        fh.write(f"\n==== {datetime.now(timezone.utc).isoformat()} {' '.join(args)}\n")
        fh.flush()
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=fh,
                                  text=True, timeout=timeout, cwd=HERE.parent)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s; see {log}", "wall_s": time.perf_counter() - t0}
    fh_out = proc.stdout.strip().splitlines()
    with open(log, "a") as fh:
        fh.write("\n".join(fh_out) + "\n")
    if proc.returncode != 0 or not fh_out:
        return {"error": f"exit {proc.returncode}; see {log}", "wall_s": time.perf_counter() - t0}
    try:
        out = json.loads(fh_out[-1])
    except ValueError:
        return {"error": f"no result line; see {log}", "wall_s": time.perf_counter() - t0}
    out["wall_s"] = time.perf_counter() - t0
    return out


RUN_CODE = """
import json, sys, yaml
import tunesmith
recipe = yaml.safe_load(open(sys.argv[1]))
path = tunesmith.run(recipe, sys.argv[2:])
print(json.dumps({"run": str(path)}))
"""

ADVISE_CODE = """
import json, sys, yaml
import tunesmith
out = tunesmith.advise(yaml.safe_load(open(sys.argv[1])))
print(json.dumps({"recommendation": out["recommendation"], "method": out["method"], "verdict": out["verdict"],
                  "path": out["path"]}, default=str))
"""

TRL_CODE = """
import sys
sys.path.insert(0, sys.argv[2])
from quality_trl import main
main(sys.argv[1], sys.argv[3], sys.argv[4])
"""


def advised_overrides(advice: dict, recipe_path: Path) -> list[str] | None:
    """The recipe overrides the advice asks for, [] when they leave the recipe as it is, None when it
    advises against fine-tuning."""
    from tunesmith.config import load_recipe
    rec = advice.get("recommendation") or {}
    if not rec.get("fine_tune"):
        return None
    overrides = list(rec.get("overrides") or [])
    same = load_recipe(recipe_path).model_dump() == load_recipe(recipe_path, overrides).model_dump()
    return [] if same else overrides


# --- reading the runs --------------------------------------------------------------------------------

def finished_run(runs: Path, name: str, recipe: dict) -> Path | None:
    """The newest run ``name-NNN`` under ``runs`` whose evaluation finished (its report data written) and
    whose recipe is ``recipe`` (same data files, budget and test size; the run's saved recipe has every default
    filled in, so the keys ``recipe`` sets are compared)."""
    import yaml

    def same(given, saved) -> bool:
        if isinstance(given, dict):
            return isinstance(saved, dict) and all(same(v, saved.get(k)) for k, v in given.items())
        return given == saved

    for run in sorted(runs.glob(f"{name}-[0-9][0-9][0-9]"), reverse=True):
        if (run / "eval" / "report_data.json").is_file() and \
                same(recipe, yaml.safe_load((run / "recipe.yaml").read_text()) or {}):
            return run
    return None


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def predictions(run: Path) -> dict[str, list[dict]]:
    """System -> predictions of one run (base, few_shot, rag, tuned, tuned_rag, the label-safe ones)."""
    out = {}
    for name in ("base", "tuned"):
        res = _load(run / "eval" / f"{name}.json") or {}
        if res.get("predictions"):
            out[name] = res["predictions"]
        safe = (res.get("label_safe") or {}).get("predictions")
        if safe:
            out[f"{name}_label_safe"] = safe
    for name, res in (_load(run / "eval" / "baselines.json") or {}).items():
        if isinstance(res, dict) and res.get("predictions"):
            out[name] = res["predictions"]
    return out


def run_facts(run: Path) -> dict:
    train = _load(run / "train.json") or {}
    report = _load(run / "eval" / "report_data.json") or {}
    import yaml
    try:
        recipe = yaml.safe_load((run / "recipe.yaml").read_text()) or {}
    except OSError:
        recipe = {}
    forgetting = report.get("forgetting") or {}
    behaviour = forgetting.get("behaviour") or {}
    budget = train.get("time_budget") or {}
    tcfg = recipe.get("train") or {}
    steps = train.get("steps") or 0
    seen = train.get("examples_seen") or steps * tcfg.get("batch_size", 8) * tcfg.get("grad_accum", 1)
    return {"run": str(run), "steps": steps, "examples_seen": seen,
            # the whole training stage (a head's probe, validations, saves), not only the optimizer steps
            "train_s": train.get("stage_s") or train.get("wall_s"),
            "objective": (recipe.get("objective") or {}).get("name"), "objective_notes": train.get("objective_notes"),
            "budget": {k: budget.get(k) for k in ("budget_s", "planned_steps", "actual_s")} if budget else None,
            "precision": (train.get("precision") or {}).get("used"),
            "general_ppl_change": forgetting.get("perplexity_change"),
            "behaviour_drift": behaviour.get("drift"),
            "recommendation": (report.get("recommendation") or {}).get("text")}


def score_systems(preds: dict[str, list[dict]], key: str, labels: list[str] | None) -> dict:
    """Metric with 95% interval per system, and each system minus tunesmith's defaults (paired)."""
    from tunesmith.eval import metrics, stats
    if not preds:
        return {"n": 0, "metric": key, "systems": {}}
    n = min(len(p) for p in preds.values())
    weights = stats.resample_weights(n)
    refs = [str(p["reference"]) for p in preds["tuned"][:n]] if "tuned" in preds else None
    out, stat = {}, {}
    for system, p in preds.items():
        p = p[:n]
        if refs is not None and [str(x["reference"]) for x in p] != refs:
            out[system] = {"error": "different test items than the defaults run"}
            continue
        s = stats.item_stat(key, [str(x["prediction"]) for x in p], [str(x["reference"]) for x in p], labels)
        if s is None:
            continue
        stat[system] = s
        extra = {}
        if labels:
            extra["macro_f1"] = metrics.compute(["accuracy"], [str(x["prediction"]) for x in p],
                                                [str(x["reference"]) for x in p], labels).get("macro_f1")
        out[system] = {"value": s.point(), "ci": stats.interval(s, weights), **extra}
    if "tuned" in stat:
        for system, s in stat.items():
            if system != "tuned":
                out[system]["vs_defaults"] = stats.paired_difference(stat["tuned"], s, weights)
    return {"n": n, "metric": key, "systems": out}


def task_result(task, folder: Path, systems: dict, budget: str) -> dict:
    from tunesmith.eval import decide
    defaults = systems.get("defaults") or {}
    if not defaults.get("run"):
        return {"task": task.name, "shape": task.shape, "error": defaults.get("error", "defaults did not run"),
                "systems": systems}
    run = Path(defaults["run"])
    preds = predictions(run)
    report = _load(run / "eval" / "report_data.json") or {}
    table = report.get("systems") or {}
    key = table.get("headline") or ("accuracy" if task.task == "classification" else "rougeL")
    labels = list(task.data["labels"].values()) if task.data.get("labels") else None
    if labels:
        refs = [str(p["reference"]) for p in preds.get("tuned", [])]
        train_refs = [json.loads(line).get("label") for line in (folder / "train.jsonl").open()]
        answer = decide.majority_label(labels, [r for r in train_refs if r])
        if answer and refs:
            preds["majority"] = [{"prediction": answer, "reference": r} for r in refs]
    facts = {"defaults": run_facts(run)}
    for name in ("advised", "trl", "trl_cpu"):
        info = systems.get(name) or {}
        if info.get("run"):
            other = predictions(Path(info["run"]))
            if "tuned" in other:
                preds[name] = other["tuned"]
            facts[name] = run_facts(Path(info["run"]))
        facts.setdefault(name, {}).update({k: v for k, v in info.items() if k != "run"})
    scored = score_systems(preds, key, labels)
    for system, row in scored["systems"].items():
        owner = system if system in ("advised", "trl", "trl_cpu") else ("defaults" if system.startswith("tuned") else None)
        if owner and owner in facts:
            f = facts[owner]
            row.update({k: f.get(k) for k in ("examples_seen", "train_s", "general_ppl_change", "behaviour_drift")})
    alternatives = [s for s in ("base", "few_shot", "rag", "trl", "trl_cpu") if s in scored["systems"]]
    beaten = {s: (scored["systems"][s].get("vs_defaults") or {}).get("ci", [0, 0])[1] < 0 for s in alternatives}
    return {"task": task.name, "shape": task.shape, "source": task.source, "budget": budget, **scored,
            "defaults_beats": beaten, "facts": facts, "degenerate": {
                r["system"]: r.get("degenerate") for r in table.get("rows", []) if r.get("degenerate")},
            }


# --- output ------------------------------------------------------------------------------------------

SCALED = ("rouge1", "rouge2", "rougeL", "bleu")     # already 0..100 (accuracy and exact match are 0..1)


def _pct(key: str, v) -> str:
    if v is None:
        return "–"
    return f"{(1 if key in SCALED else 100) * v:.1f}"


def markdown(result: dict) -> str:
    lines = [f"Measured {result['date']} on {result['machine']['cpu']} ({result['machine']['cores']} cores), "
             f"training budget {result['budget']} per trained system, {MODEL}.", ""]
    for t in result["tasks"]:
        if t.get("error"):
            lines += [f"**{t['task']}** ({t.get('shape', '')}): not run: {t['error']}", ""]
            continue
        lines += [f"**{t['task']}**: {t['shape']}; {t['n']} test items; metric {t['metric']} (95% CI); "
                  f"Δ = system − tunesmith defaults (paired 95% CI).", "",
                  "| system | " + t["metric"] + " | 95% CI | Δ vs defaults | examples seen | train s | general ppl |",
                  "|---|---:|---|---|---:|---:|---:|"]
        order = [s for s in SYSTEM_LABELS if s in t["systems"]]
        for s in order:
            row = t["systems"][s]
            if "value" not in row:
                continue
            d = row.get("vs_defaults")
            k = 1 if t["metric"] in SCALED else 100
            delta = f"{k * d['delta']:+.1f} [{k * d['ci'][0]:+.1f}, {k * d['ci'][1]:+.1f}]" if d else ""
            ppl = row.get("general_ppl_change")
            lines.append(f"| {SYSTEM_LABELS[s]} | {_pct(t['metric'], row['value'])} | "
                         f"{_pct(t['metric'], row['ci'][0])}–{_pct(t['metric'], row['ci'][1])} | {delta} | "
                         f"{row.get('examples_seen') or ''} | "
                         f"{'' if row.get('train_s') is None else round(row['train_s'])} | "
                         f"{'' if ppl is None else f'{100 * ppl:+.1f}%'} |")
        for s, label in (("defaults", "tunesmith defaults"), ("advised", "tunesmith advised")):
            f = t["facts"].get(s) or {}
            notes = "; ".join(f"{k}: {v}" for k, v in (f.get("objective_notes") or {}).items())
            if f.get("objective") and f["objective"] != "sft":
                lines.append(f"\n{label}: objective {f['objective']}" + (f" ({notes})" if notes else ""))
        adv = (t["facts"].get("advised") or {})
        if adv.get("note"):
            lines.append(f"\nadvised: {adv['note']}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--systems", default="defaults,advised,trl,trl_cpu")
    ap.add_argument("--budget", default="10m", help="training budget per trained system (tunesmith duration)")
    ap.add_argument("--train", type=int, default=1600, help="training examples per task (at most)")
    ap.add_argument("--test", type=int, default=200, help="test items per task")
    ap.add_argument("--work", default=None, help="folder for data and runs (default: a new temporary folder)")
    ap.add_argument("--out", default="bench-quality.json")
    ap.add_argument("--markdown", default="bench-quality.md")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a finished defaults run of a task found under --work (continues an interrupted bench)")
    args = ap.parse_args(argv)
    from tunesmith.durations import parse_duration
    budget_s = parse_duration(args.budget)
    work = Path(args.work or tempfile.mkdtemp(prefix="tunesmith-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    results = []
    timeout = 6 * budget_s + 3600
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        task = TASKS[name]
        folder = work / name
        log = folder / "bench.log"
        try:
            task.build(folder, args.train, args.test)
        except Unavailable as e:
            results.append({"task": name, "shape": task.shape, "error": str(e)})
            continue
        recipe = recipe_for(task, folder, args.budget, args.test)
        recipe_path = folder / "recipe.yaml"
        import yaml
        recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        print(f"[{name}] data: {folder}; defaults", file=sys.stderr, flush=True)
        done = finished_run(folder / "runs", f"q-{name}", recipe) if args.reuse else None
        systems = {"defaults": {"run": str(done), "reused": True} if done else
                   _child(RUN_CODE, [str(recipe_path)], log, timeout)}
        if "advised" in wanted:
            print(f"[{name}] advise", file=sys.stderr, flush=True)
            advice = _child(ADVISE_CODE, [str(recipe_path)], log, timeout)
            overrides = advised_overrides(advice, recipe_path) if "error" not in advice else None
            info = {"advice": (advice.get("recommendation") or {}).get("text") or advice.get("error"),
                    "advise_s": advice.get("wall_s")}
            if overrides is None:
                info["note"] = f"advise recommends not fine-tuning: {info['advice']}"
            elif not overrides:
                info["note"] = "advise recommends the default configuration (the defaults row stands for it)"
            else:
                print(f"[{name}] advised run {overrides}", file=sys.stderr, flush=True)
                info.update(_child(RUN_CODE, [str(recipe_path), *overrides, "name=q-" + name + "-advised"],
                                   log, timeout), overrides=overrides)
            systems["advised"] = info
        for trl in ("trl", "trl_cpu"):
            if trl in wanted and systems["defaults"].get("run"):
                print(f"[{name}] {trl}", file=sys.stderr, flush=True)
                systems[trl] = _child(TRL_CODE, [str(recipe_path), str(HERE), str(budget_s), trl], log, timeout)
        results.append(task_result(task, folder, systems, args.budget))
        _write(args, work, results)
    out = _write(args, work, results)
    print(json.dumps(out, indent=1, default=str))
    return 0


def _write(args, work: Path, results: list[dict]) -> dict:
    out = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "budget": args.budget, "model": MODEL,
           "work": str(work), "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                          "python": platform.python_version()},
           "tasks": results}
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    Path(args.markdown).write_text(markdown(out))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
