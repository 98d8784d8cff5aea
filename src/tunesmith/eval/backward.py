"""Backward-transfer evaluation of a continued version: its own test set and every ancestor's.

A run made by `tunesmith continue` (stage ``continue`` in its run.json) is evaluated, after its own
evaluation, on each ancestor version's test split with that ancestor's task metric and label set (the
ancestor's recipe), and compared with the score the ancestor itself recorded (its eval/summary.json) and,
per example, with the ancestor's own predictions (flips). Its own suite compares it with the parent model
on the new test set. Writes ``eval/backward.json``:
``{"suites": {suite: {metric, ancestor, ancestor_score, child_score, delta, n, flips}}, "table": ...}``.
"""
from __future__ import annotations

from pathlib import Path

from ..data.split import sample_in_order
from ..fsutil import atomic_write_json
from ..objectives.base import hook
from ..render import is_number
from ..rundir import Layout, Run, read_json


def continuation(run) -> dict | None:
    """The run's continuation record (what `tunesmith continue` wrote), or None."""
    return (Layout(run.path).stages().get("continue") or None) if run is not None else None


def _headline(recipe) -> str:
    return (recipe.metrics() or ["exact_match"])[0]


def _score(model, tokenizer, objective, exs, recipe, labels, title: str) -> dict:
    """``model`` on ``exs`` with ``recipe``'s metrics (the objective's own evaluation when it has one)."""
    from .evaluate import evaluate_model
    own = hook(objective, "evaluate")
    if own:
        seqs = objective.build({"test": exs}, tokenizer, recipe)[0]["test"]
        return own(model, tokenizer, exs, seqs, recipe, which="tuned")
    return evaluate_model(model, tokenizer, exs, [], recipe, labels, objective, title=title)


def _flips(before: list[dict], after: list[dict]) -> dict:
    """Per-example changes between two prediction lists on the same prompts (matched by prompt)."""
    def key(p):
        return repr(p.get("prompt"))
    old = {key(p): bool(p.get("correct")) for p in before if "correct" in p}
    out = {"right_to_wrong": 0, "wrong_to_right": 0, "compared": 0}
    for p in after:
        k = key(p)
        if k not in old or "correct" not in p:
            continue
        out["compared"] += 1
        if old[k] != bool(p["correct"]):
            out["right_to_wrong" if old[k] else "wrong_to_right"] += 1
    return out


def _suite(metric: str, ancestor: str, before: float | None, after: float | None, n: int, flips: dict | None) -> dict:
    delta = after - before if is_number(before) and is_number(after) else None
    return {"metric": metric, "ancestor": ancestor, "ancestor_score": before, "child_score": after, "delta": delta,
            "n": n, "flips": flips}


def evaluate_backward(session, tuned_model, tuned_result: dict, base_result: dict | None = None) -> dict | None:
    """Backward-transfer results of a continued run (None for other runs); writes eval/backward.json."""
    record = continuation(session.run)
    if not record:
        return None
    from ..data.prepare import load_splits
    run, r = session.run, session.run.recipe
    own_name = f"{record.get('name', r.name)}@v{record['version']}" if record.get("version") is not None \
        else r.name                                  # a continued run that is not a version (a job's model)
    metric = _headline(r)
    suites: dict = {}
    # own (new) suite: the child against its parent on the new test set
    parent_run = Run(record["parent_run"])
    exs, _ = session.eval_examples()
    if record.get("strategy") == "stack" and base_result and metric in (base_result.get("metrics") or {}):
        parent_res = base_result             # the base of a stacked version is the parent's merged model
    else:
        from ..tuned import load_tuned, run_objective
        # an objective with weights of its own (a label head) scores with the parent's, its labels
        parent_objective = run_objective(parent_run) if hook(session.objective, "load_meta") else session.objective
        parent_model, _ = load_tuned(parent_run, session.device, tokenizer=session.tokenizer,
                                     objective=parent_objective)
        parent_res = _score(parent_model, session.tokenizer, parent_objective, exs, r, session.labels,
                            f"backward: {record['parent']} on {own_name}")
        del parent_model
    suites[own_name] = _suite(metric, record["parent"], (parent_res.get("metrics") or {}).get(metric),
                              (tuned_result.get("metrics") or {}).get(metric), len(exs),
                              _flips(parent_res.get("predictions") or [], tuned_result.get("predictions") or []))
    # every ancestor's suite, with the ancestor's own metric and labels
    for anc in record.get("ancestors") or []:
        arun = Run(anc["run_dir"])
        ar = arun.recipe
        splits, manifest = load_splits(arun.data_dir)
        labels = manifest.get("labels") or manifest.get("inferred_labels")
        aexs = sample_in_order(splits["test"], ar.eval.max_examples, ar.data.split.seed)   # as the ancestor's eval
        am = _headline(ar)
        res = _score(tuned_model, session.tokenizer, session.objective, aexs, ar, labels,
                     f"backward: {own_name} on {anc['ref']}")
        summary = read_json(arun.summary_json) or {}
        recorded = ((summary.get("tuned") or {}).get("metrics") or {}).get(am)
        before_preds = (read_json(arun.eval_dir / "tuned.json") or {}).get("predictions") or []
        suites[anc["ref"]] = _suite(am, anc["ref"], recorded, (res.get("metrics") or {}).get(am), len(aexs),
                                    _flips(before_preds, res.get("predictions") or []))
    out = {"version": own_name, "parent": record["parent"], "strategy": record.get("strategy"),
           "replay": record.get("replay"), "suites": suites, "table": lineage_table(record, suites, own_name)}
    atomic_write_json(run.eval_dir / "backward.json", out)
    return out


def lineage_table(record: dict, suites: dict, own_name: str) -> dict:
    """Version × test suite: each ancestor's recorded score on its own suite, the parent on the new suite,
    the child on every suite (None where a version was not measured on a suite)."""
    names = [a["ref"] for a in record.get("ancestors") or []] + [own_name]
    columns = list(suites)
    cells = {v: {c: None for c in columns} for v in names}
    for suite, s in suites.items():
        cells[own_name][suite] = s["child_score"]
        cells.setdefault(s["ancestor"], {c: None for c in columns})[suite] = s["ancestor_score"]
    return {"suites": columns, "metrics": {c: suites[c]["metric"] for c in columns},
            "versions": [{"version": v, "scores": cells[v]} for v in cells]}


def earlier_backward(record: dict, run_dir: str | Path | None = None) -> list[dict]:
    """The backward.json of each ancestor that was itself a continuation, and of the sibling versions
    (continued from the same parent, in the same runs folder: e.g. with and without replay), for the plot."""
    from ..rundir import find_runs
    out, seen = [], set()
    paths = [Path(a["run_dir"]) for a in record.get("ancestors") or []]
    if run_dir is not None:
        here = Path(run_dir).resolve()
        paths += sorted(p for p in find_runs(here.parent) if p.resolve() != here
                        and (Layout(p).stages().get("continue") or {}).get("parent") == record.get("parent"))
    for path in paths:
        b = read_json(Layout(path).eval_dir / "backward.json")
        if b and b.get("version") not in seen:
            seen.add(b.get("version"))
            out.append(b)
    return out


__all__ = ["evaluate_backward", "continuation", "lineage_table", "earlier_backward"]
