"""Promotion gates, promotion and rollback of a named model's ``champion`` alias.

The gates come from the version's own recipe (``promote:``, :class:`tunesmith.config.PromoteConfig`):

* ``min_gain`` -- the headline metric (``eval/summary.json``) minus the parent version's (the base
  model's for a version without parent); loss/perplexity metrics count a fall as a gain;
* ``non_inferiority`` -- the largest drop allowed on each ancestor test suite, read from the backward
  evaluation: key ``backward`` of the version's ``lineage.json``, else ``eval/backward.json`` (written by
  :mod:`tunesmith.eval.backward`): ``{"version": "name@vN", "suites": {SUITE: {"metric": "accuracy",
  "ancestor_score": 0.8, "child_score": 0.78}}}``; the version's own suite is skipped; ``reference``/
  ``before`` are also read as the ancestor's score, ``value``/``after`` as the child's; ``higher_is_better``
  defaults from the metric name. Without a backward evaluation the rule is "not measured" and passes
  with a note;
* ``max_perplexity_rise`` -- ``comparison.perplexity_change`` of ``eval/forgetting.json`` (not measured:
  passes with a note);
* ``max_latency_s`` -- mean seconds per evaluated answer (``eval/tuned.json``), ``max_size_mb`` -- the
  size of the model files served (merged export, else ``model/``).

:func:`promote` moves ``champion`` to the version and the old champion to ``previous`` when every rule
passes; otherwise it raises one line naming each failed rule with its numbers and moves nothing.
``force=True`` promotes anyway and records the override in ``lineage.json``. :func:`rollback` swaps
``champion`` and ``previous``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TunesmithError
from ..rundir import Layout, read_json
from .versions import Version, move_aliases, read_lineage, resolve, update_lineage, versions

_LOWER_IS_BETTER = ("loss", "perplexity", "wall_s", "latency", "error")


def lower_is_better(metric: str | None) -> bool:
    return any(k in str(metric or "").lower() for k in _LOWER_IS_BETTER)


@dataclass
class Rule:
    name: str
    passed: bool
    detail: str
    measured: bool = True

    def as_dict(self) -> dict:
        return {"rule": self.name, "passed": self.passed, "measured": self.measured, "detail": self.detail}


@dataclass
class Verdict:
    ref: str
    rules: list[Rule] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    def failures(self) -> list[Rule]:
        return [r for r in self.rules if not r.passed]

    def as_dict(self) -> dict:
        return {"ref": self.ref, "passed": self.passed, "checked": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "rules": [r.as_dict() for r in self.rules]}


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def headline(run_dir: Path) -> dict | None:
    """``{"metric", "base", "tuned"}`` of a run (read fresh from its evaluation)."""
    from ..runs import run_summary
    return run_summary(run_dir).get("headline")


def _version_headline(v: Version) -> dict | None:
    if Layout(v.run_dir).summary_json.is_file():
        return headline(v.run_dir)
    return (v.lineage.get("metrics") or {}).get("headline")


def _gain(metric: str, new: float, ref: float) -> float:
    return ref - new if lower_is_better(metric) else new - ref


def check_min_gain(v: Version, parent: Version | None, limit: float | None) -> Rule | None:
    if limit is None:
        return None
    head = _version_headline(v)
    if not head or not _num(head.get("tuned")):
        return Rule("min_gain", False, "no headline metric for this version (run `tunesmith eval` on it)")
    metric = head["metric"]
    if parent is not None:
        ph = _version_headline(parent) or {}
        if ph.get("metric") != metric or not _num(ph.get("tuned")):
            return Rule("min_gain", False, f"parent {parent.ref} has no {metric} to compare with")
        ref_value, against = float(ph["tuned"]), parent.ref
    else:
        if not _num(head.get("base")):
            return Rule("min_gain", True, f"{metric} {head['tuned']:.4g}: no base-model result to compare with "
                        "(not measured)", measured=False)
        ref_value, against = float(head["base"]), "base model"
    gain = _gain(metric, float(head["tuned"]), ref_value)
    ok = gain >= limit - 1e-12
    return Rule("min_gain", ok, f"{metric} {head['tuned']:.4g} vs {ref_value:.4g} ({against}): gain "
                f"{gain:+.4g} {'>=' if ok else '<'} min_gain {limit:g}")


def backward_suites(v: Version) -> dict | None:
    """Ancestor test-suite results of a version: lineage ``backward``, else ``eval/backward.json``."""
    block = (read_lineage(v.run_dir) or v.lineage or {}).get("backward")
    if not isinstance(block, dict):
        block = read_json(Layout(v.run_dir).eval_dir / "backward.json")
    if not isinstance(block, dict):
        return None
    suites = block.get("suites") if isinstance(block.get("suites"), dict) else block
    own = {v.ref, block.get("version")}        # the version's own (new) suite is min_gain's business
    return {k: s for k, s in suites.items() if isinstance(s, dict) and k not in own}


def _pick(d: dict, *keys):
    for k in keys:
        if _num(d.get(k)):
            return float(d[k])
    return None


def check_non_inferiority(v: Version, margin: float | None) -> Rule | None:
    if margin is None:
        return None
    suites = backward_suites(v)
    if not suites:
        return Rule("non_inferiority", True, "no backward evaluation on ancestor test suites (not measured)",
                    measured=False)
    bad, good = [], []
    for suite, s in sorted(suites.items()):
        ref = _pick(s, "ancestor_score", "reference", "before", "parent")
        val = _pick(s, "child_score", "value", "after", "tuned")
        if ref is None or val is None:
            continue
        metric = s.get("metric") or "score"
        hib = s.get("higher_is_better")
        lower = (not hib) if isinstance(hib, bool) else lower_is_better(metric)
        drop = (val - ref) if lower else (ref - val)
        text = f"{suite} {metric} {ref:.4g} -> {val:.4g} (drop {drop:+.4g})"
        (bad if drop > margin + 1e-12 else good).append(text)
    if not bad and not good:
        return Rule("non_inferiority", True, "backward evaluation has no comparable suites (not measured)",
                    measured=False)
    if bad:
        return Rule("non_inferiority", False, "; ".join(bad) + f" > margin {margin:g}")
    return Rule("non_inferiority", True, "; ".join(good) + f" within margin {margin:g}")


def check_perplexity(v: Version, limit: float | None) -> Rule | None:
    if limit is None:
        return None
    comp = (read_json(Layout(v.run_dir).eval_dir / "forgetting.json") or {}).get("comparison") or {}
    change = comp.get("perplexity_change") if isinstance(comp, dict) else None
    if not _num(change):
        return Rule("max_perplexity_rise", True, "no general-text perplexity comparison (not measured)",
                    measured=False)
    ok = change <= limit + 1e-12
    return Rule("max_perplexity_rise", ok, f"general perplexity change {100 * change:+.2f}% "
                f"{'<=' if ok else '>'} {100 * limit:g}%")


def check_latency(v: Version, limit: float | None) -> Rule | None:
    if limit is None:
        return None
    gen = (read_json(Layout(v.run_dir).eval_dir / "tuned.json") or {}).get("generation") or {}
    value = gen.get("per_example_s") if isinstance(gen, dict) else None
    if not _num(value):
        return Rule("max_latency_s", False, "no measured latency (eval/tuned.json generation.per_example_s)")
    ok = value <= limit
    return Rule("max_latency_s", ok, f"{value:.3g} s per answer {'<=' if ok else '>'} {limit:g} s")


def served_size_mb(run_dir: Path) -> float:
    layout = Layout(run_dir)
    folder = layout.merged_dir if layout.has_merged() else layout.model_dir
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6 if folder.is_dir() else 0.0


def check_size(v: Version, limit: float | None) -> Rule | None:
    if limit is None:
        return None
    size = served_size_mb(v.run_dir)
    ok = size <= limit
    return Rule("max_size_mb", ok, f"{size:.3g} MB {'<=' if ok else '>'} {limit:g} MB")


def gate_policy(v: Version):
    """The version's own ``promote:`` section (a recipe error is one line naming the field)."""
    from ..rundir import Run
    return Run(v.run_dir).recipe.promote


def check(v: Version, *, tracking_uri=None, root=None) -> Verdict:
    """Every gate of the version's recipe, against its parent (or the base model)."""
    policy = gate_policy(v)
    parent = resolve(v.parent, tracking_uri=tracking_uri, root=root) if v.parent else None
    rules = [check_min_gain(v, parent, policy.min_gain), check_non_inferiority(v, policy.non_inferiority),
             check_perplexity(v, policy.max_perplexity_rise), check_latency(v, policy.max_latency_s),
             check_size(v, policy.max_size_mb)]
    return Verdict(v.ref, [r for r in rules if r is not None])


def _root_for(v: Version, root):
    return root if root is not None else v.run_dir.parent


def promote(ref: str, force: bool = False, *, tracking_uri=None, root=None) -> dict:
    """Check the gates and move ``champion`` to the version (the old champion becomes ``previous``).

    Returns ``{"ref", "verdict", "champion", "previous", "forced"}``; a failed gate raises one line
    naming each failed rule with its numbers, and nothing moves (unless ``force``)."""
    v = resolve(ref, tracking_uri=tracking_uri, root=root)
    root = _root_for(v, root)
    verdict = check(v, tracking_uri=tracking_uri, root=root)
    record = verdict.as_dict()
    if not verdict.passed and not force:
        update_lineage(v.run_dir, gate=record)
        raise TunesmithError(f"promotion of {v.ref} refused by the gates: "
                             + "; ".join(f"{r.name}: {r.detail}" for r in verdict.failures())
                             + " (nothing moved; --force overrides)", field="promote")
    found = versions(v.name, tracking_uri=tracking_uri, root=root)
    old = next((x for x in found if "champion" in x.aliases), None)
    moves: dict[str, int | None] = {"champion": v.number}
    if old is not None and old.number != v.number:
        moves["previous"] = old.number
    move_aliases(v.name, moves, tracking_uri=tracking_uri, root=root)
    fields = {"gate": record}
    if force and not verdict.passed:
        overrides = list((read_lineage(v.run_dir) or {}).get("overrides") or [])
        overrides.append({"action": "promote", "forced": True, "at": record["checked"],
                          "failed": [r.as_dict() for r in verdict.failures()]})
        fields["overrides"] = overrides
    update_lineage(v.run_dir, **fields)
    return {"ref": v.ref, "verdict": record, "champion": v.ref,
            "previous": f"{v.name}@v{moves['previous']}" if "previous" in moves else
            next((x.ref for x in found if "previous" in x.aliases), None),
            "forced": bool(force and not verdict.passed)}


def rollback(name: str, *, tracking_uri=None, root=None) -> dict:
    """``champion`` <- ``previous`` and ``previous`` <- the old champion."""
    found = versions(name, tracking_uri=tracking_uri, root=root)
    champ = next((x for x in found if "champion" in x.aliases), None)
    prev = next((x for x in found if "previous" in x.aliases), None)
    if prev is None:
        raise TunesmithError(f"cannot roll back '{name}': no previous version (champion: "
                             f"{champ.ref if champ else 'none'})", field="name")
    moves: dict[str, int | None] = {"champion": prev.number, "previous": champ.number if champ else None}
    if champ is not None and champ.number == prev.number:
        moves["previous"] = None
    move_aliases(name, moves, tracking_uri=tracking_uri, root=root)
    return {"name": name, "champion": prev.ref, "previous": champ.ref if champ and champ is not prev else None}


__all__ = ["Rule", "Verdict", "check", "promote", "rollback", "backward_suites", "lower_is_better"]
