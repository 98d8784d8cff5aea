"""Data stage: load -> clean -> anonymise PII -> dedup -> split -> leakage check -> saved splits + manifest.

Nothing is removed quietly: the manifest counts every removed example per split and reason (with a
few listed by line), conflicting answers are reported (and kept by default), user-given validation
and test files are evaluated as given (their duplicates and overlaps with training are reported),
and :func:`build_splits` stops when cleaning removes more than ``data.clean.max_removed``.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

from ..config import DataConfig, Recipe
from ..errors import TunesmithError
from ..fsutil import atomic_write_json, atomic_write_text, sha256_file
from .clean import clean_example
from .coverage import infer_labels, label_coverage
from .dedup import Duplicates, cross_matches, find_duplicates, normalize_key, shared_lines
from .example import Example
from .formats import label_set, labelled_prompt, load_examples_strict
from .io import resolve_path
from .pii import anonymize, anonymize_example
from .split import leakage, split_examples

SPLITS = ("train", "validation", "test")
LISTED = 5          # removed examples listed per split and reason
LISTED_PAIRS = 20   # duplicate / conflict / overlap pairs listed
GUARD_MIN = 20      # a given validation/test file smaller than this is not checked on its own
REASONS = {          # reason -> (words, recipe key that changes it)
    "empty_after_cleaning": ("empty after cleaning", "data.clean.normalize / data.clean.strip_html"),
    "exact_duplicate": ("exact duplicates", "data.clean.dedup"),
    "near_duplicate": ("near duplicates", "data.clean.near_dup_threshold (or data.clean.near_dedup: false)"),
    "conflict": ("conflicting answers", "data.clean.conflicts (keep_both keeps them)"),
    "leakage": ("held-out prompts also in training", "data.split"),
    "train_overlap": ("overlaps with training", "data.clean.dedup_given_eval: false"),
}


def snippet(ex: Example, width: int = 80) -> str:
    """A short one-line view of an example (its input, then ``→`` its answer), PII replaced."""
    if ex.label is not None or not ex.messages:
        prompt = ex.text or ""
    else:
        users = [m["content"] for m in ex.prompt_messages if m["role"] == "user"]
        prompt = users[-1] if users else ex.prompt_key()
    text = " ".join(prompt.split())
    text = text[:width] + ("…" if len(text) > width else "")
    answer = ex.label if ex.label is not None else ex.reference
    if answer is not None:
        answer = " ".join(answer.split())
        text += " → " + answer[:40] + ("…" if len(answer) > 40 else "")
    return anonymize(text)[0]


class Removals:
    """Every removed example, counted per split and reason, with the first few listed."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.examples: dict[str, dict[str, list[dict]]] = {}

    def add(self, split: str, reason: str, ex: Example, kept: Example | None = None,
            similarity: float | None = None) -> None:
        per = self.counts.setdefault(split, {})
        per[reason] = per.get(reason, 0) + 1
        listed = self.examples.setdefault(split, {}).setdefault(reason, [])
        if len(listed) < LISTED:
            item: dict = {"line": ex.line, "text": snippet(ex)}
            if kept is not None:
                item.update(kept_line=kept.line, kept_text=snippet(kept))
            if similarity is not None:
                item["similarity"] = similarity
            listed.append(item)

    def total(self, reason: str | None = None) -> int:
        return sum(n for per in self.counts.values() for r, n in per.items() if reason in (None, r))


def _clean(examples: list[Example], d: DataConfig, stats: dict, labels: list[str] | None,
           removed: Removals, split: str, normalized: bool = False) -> list[Example]:
    c = d.clean
    out, pii = [], Counter()
    for ex in examples:
        if normalized:            # never change the caller's examples
            ex = replace(ex, messages=[dict(m) for m in ex.messages])
        else:
            ex = clean_example(ex, strip_html=c.strip_html, normalize=c.normalize)
        if c.anonymize_pii:
            ex, hits = anonymize_example(ex)
            pii.update(hits)
        if ex.label is not None and ex.messages:       # labelled: rebuild the prompt from the cleaned text
            if not (ex.text or "").strip():
                removed.add(split, "empty_after_cleaning", ex)
                continue
            user = next(m for m in ex.messages if m["role"] == "user")
            user["content"] = labelled_prompt(d, ex.text, labels or [])
        if not ex.full_text().strip() or any(not m["content"].strip() for m in ex.messages) \
                or (ex.rejected is not None and not ex.rejected.strip()):
            removed.add(split, "empty_after_cleaning", ex)
            continue
        out.append(ex)
    for k, v in pii.items():
        stats.setdefault("pii_replaced", {})[k] = stats.get("pii_replaced", {}).get(k, 0) + v
    return out


def _found(examples: list[Example], dups: Duplicates, threshold: float) -> dict:
    """What the duplicate search found in one file (whether or not the recipe removes it)."""
    def pairs(mapping: dict[int, int]) -> list[list[int]]:
        return [[examples[i].line, examples[j].line] for i, j in list(mapping.items())[:LISTED_PAIRS]]

    near = {i: j for i, j in dups.near.items() if i not in dups.exact}
    return {"exact": len(dups.exact), "exact_pairs": pairs(dups.exact),
            "near": len(near), "near_pairs": pairs(near), "near_threshold": threshold,
            "conflicts": len(dups.conflicts),
            "conflict_pairs": [[examples[a].line, examples[b].line] for a, b in dups.conflicts[:LISTED_PAIRS]],
            "shared_text": dups.compared.shared_summary()}


def _conflict_drops(dups: Duplicates, policy: str) -> dict[int, int]:
    """Examples the conflict policy removes, each mapped to a kept (or first) member of its group."""
    if policy == "keep_both":
        return {}
    answers = [normalize_key(a) for a in dups.compared.answers]
    votes = Counter()
    for target in list(dups.exact.values()) + list(dups.near.values()):
        votes[target] += 1
    drop: dict[int, int] = {}
    for group in dups.groups():
        if policy == "drop_both":
            winner = None
        else:
            tally = Counter()
            for i in group:
                tally[answers[i]] += 1 + votes[i]
            (best, n), *rest = tally.most_common() + [(None, -1)]
            winner = best if n > rest[0][1] else None          # a tie has no majority: drop all
        kept = [i for i in group if answers[i] == winner]
        for i in group:
            if answers[i] != winner:
                drop[i] = kept[0] if kept else next(j for j in group if j != i)
    return drop


def _dedup(examples: list[Example], d: DataConfig, removed: Removals, split: str,
           report: dict) -> tuple[list[Example], list[str]]:
    """Drop the duplicates (and, by policy, conflicts) of the training pool; returns the kept
    examples and their split keys (every member of a conflict group shares one key)."""
    c = d.clean
    dups = find_duplicates(examples, c.near_dup_threshold, near=c.near_dedup, shared=report["shared"])
    report["duplicates"][split] = _found(examples, dups, c.near_dup_threshold)
    drop: dict[int, tuple[str, int]] = {}
    if c.dedup:
        drop.update({i: ("exact_duplicate", j) for i, j in dups.exact.items()})
    if c.near_dedup:
        for i, j in list(dups.exact.items()) + list(dups.near.items()):
            drop.setdefault(i, ("near_duplicate", j))
    policy_drops = _conflict_drops(dups, c.conflicts)
    for i, j in policy_drops.items():
        drop.setdefault(i, ("conflict", j))
    conflicts = report["conflicts"]
    conflicts["count"] += len(dups.conflicts)
    conflicts["removed"] += len(policy_drops)
    for a, b in dups.conflicts:
        if len(conflicts["pairs"]) < LISTED_PAIRS:
            conflicts["pairs"].append({"split": split, "lines": [examples[a].line, examples[b].line],
                                       "texts": [snippet(examples[a]), snippet(examples[b])],
                                       "similarity": dups.similarity.get((a, b))})
    for i, (reason, j) in sorted(drop.items()):
        removed.add(split, reason, examples[i], examples[j], dups.similarity.get((j, i)))
    keys = [normalize_key(ex.prompt_key()) for ex in examples]
    for group in dups.groups():
        for i in group:
            keys[i] = keys[group[0]]
    kept = [i for i in range(len(examples)) if i not in drop]
    return [examples[i] for i in kept], [keys[i] for i in kept]


def _given_eval(examples: list[Example], train: list[Example], d: DataConfig, removed: Removals,
                split: str, report: dict) -> list[Example]:
    """A user-given validation/test file: report its duplicates and overlaps with training; remove
    them only when ``data.clean.dedup_given_eval`` says so."""
    c = d.clean
    dups = find_duplicates(examples, c.near_dup_threshold, near=c.near_dedup, shared=report["shared"])
    overlaps = cross_matches(train, examples, c.near_dup_threshold, near=c.near_dedup, shared=report["shared"])
    report["duplicates"][split] = _found(examples, dups, c.near_dup_threshold)
    info = {"items": len(examples), "kept_as_given": not c.dedup_given_eval,
            "duplicates": len(dups.exact) + len({i for i in dups.near if i not in dups.exact}),
            "conflicts": len(dups.conflicts),
            "train_overlap": {"count": len(overlaps), "same_answer": sum(o["same_answer"] for o in overlaps),
                              "items": [{"line": examples[o["index"]].line, "train_line": train[o["ref"]].line,
                                         "similarity": o["similarity"], "same_answer": o["same_answer"],
                                         "text": snippet(examples[o["index"]]),
                                         "train_text": snippet(train[o["ref"]])}
                                        for o in overlaps[:LISTED_PAIRS]]},
            "removed": 0}
    report["given_eval"][split] = info
    if not c.dedup_given_eval:
        return examples
    drop: dict[int, tuple[str, Example, float | None]] = {}
    if c.dedup:
        drop.update({i: ("exact_duplicate", examples[j], None) for i, j in dups.exact.items()})
    if c.near_dedup:
        for i, j in list(dups.exact.items()) + list(dups.near.items()):
            drop.setdefault(i, ("near_duplicate", examples[j], dups.similarity.get((j, i))))
    for o in overlaps:
        drop.setdefault(o["index"], ("train_overlap", train[o["ref"]], o["similarity"]))
    for i, (reason, kept, sim) in sorted(drop.items()):
        removed.add(split, reason, examples[i], kept, sim)
    info["removed"] = len(drop)
    return [ex for i, ex in enumerate(examples) if i not in drop]


def preprocess(d: DataConfig, raw: dict[str, list[Example]], labels: list[str] | None = None, *,
               normalized: bool = False) -> tuple[dict[str, list[Example]], dict]:
    """Clean, anonymise, deduplicate and split loaded examples (``raw["train"]`` and any given
    ``validation`` / ``test``); returns the splits and the manifest's data sections.

    ``normalized`` says ``clean_example`` was already applied (as the validator does). Never
    raises over what the data contains: :func:`check_removals` applies the removal limit.
    """
    c = d.clean
    removed = Removals()
    stats: dict = {"loaded": {k: len(v) for k, v in raw.items()}}
    report: dict = {"duplicates": {}, "given_eval": {},
                    "conflicts": {"policy": c.conflicts, "count": 0, "removed": 0, "pairs": []}}
    cleaned = {k: _clean(v, d, stats, labels, removed, k, normalized) for k, v in raw.items()}
    # lines shared by many examples (a system prompt, a template) are found over every file at once
    report["shared"] = shared_lines([ex for v in cleaned.values() for ex in v], c.shared_text_share)
    pool, keys = _dedup(cleaned["train"], d, removed, "train", report)
    given = [name for name in ("validation", "test") if name in raw]
    if len(given) == 2:
        splits = {"train": pool, "validation": [], "test": []}
    else:
        splits = split_examples(pool, 0.0 if "validation" in raw else d.split.validation,
                                0.0 if "test" in raw else d.split.test, d.split.seed, keys=keys)
    leaks = {}
    for name in ("validation", "test"):
        if name in raw:
            splits[name] = _given_eval(cleaned[name], splits["train"], d, removed, name, report)
            continue
        leaked = leakage(splits["train"], splits[name])      # a held-out prompt must never be trained on
        if leaked:
            ids = {id(ex) for ex in leaked}
            splits[name] = [ex for ex in splits[name] if id(ex) not in ids]
            leaks[name] = [{"source": ex.source, "line": ex.line} for ex in leaked[:20]]
            for ex in leaked:
                removed.add(name, "leakage", ex)
    inferred = None if labels else infer_labels([ex for v in splits.values() for ex in v])
    coverage = label_coverage(splits, labels or inferred) if (labels or inferred) else None
    counts = {k: dict(sorted(v.items())) for k, v in removed.counts.items()}
    stats.update({
        "removed": {name: counts.get(name, {}) for name in SPLITS},
        "removed_total": removed.total(),
        "removal_examples": removed.examples,
        # totals kept under their earlier names
        "empty_after_cleaning": removed.total("empty_after_cleaning"),
        "exact_duplicates_removed": removed.total("exact_duplicate"),
        "near_duplicates_removed": removed.total("near_duplicate"),
        "conflicts_removed": removed.total("conflict"),
        "leakage_removed": {name: counts.get(name, {}).get("leakage", 0) for name in ("validation", "test")},
    })
    manifest = {"format": d.format, "labels": labels, "inferred_labels": inferred,
                "counts": {k: len(v) for k, v in splits.items()}, "preprocessing": stats,
                "duplicates": report["duplicates"], "conflicts": report["conflicts"],
                "given_eval": report["given_eval"], "label_coverage": coverage, "leaked_examples": leaks,
                "max_removed": c.max_removed}
    return splits, manifest


def removal_problem(manifest: dict) -> tuple[str, str] | None:
    """``(source file, message)`` when cleaning removed too much (what :func:`check_removals` raises).

    Each source file is checked on its own share: the training file (the pool split into train /
    validation / test unless those are given) and each given validation/test file of at least
    ``GUARD_MIN`` examples."""
    pre = manifest.get("preprocessing") or {}
    limit = manifest.get("max_removed", 1.0)
    loaded = pre.get("loaded") or {}

    def source(split: str) -> str:
        return split if split in loaded else "train"
    by_source: dict[str, Counter] = {}
    for split, reasons in (pre.get("removed") or {}).items():
        by_source.setdefault(source(split), Counter()).update(reasons)
    for src, reasons in by_source.items():
        n, r = loaded.get(src, 0), sum(reasons.values())
        if not n or r / n <= limit or (src != "train" and n < GUARD_MIN):
            continue
        reason, k = reasons.most_common(1)[0]
        words, key = REASONS.get(reason, (reason, "data.clean"))
        shown = next((e for s, per in (pre.get("removal_examples") or {}).items() if source(s) == src
                      for e in per.get(reason, [])), None)
        eg = ""
        if shown:
            sign = "=" if reason == "exact_duplicate" else "≈"
            eg = f", e.g. line {shown['line']}" + (f" {sign} line {shown['kept_line']}" if "kept_line" in shown else "")
        return src, (f"cleaning removed {r} of {n} examples of the {src} file ({r / n:.0%}), more than "
                     f"data.clean.max_removed={limit:g}; mostly {words} ({k}{eg}); check the data or change "
                     f"{key}, or set data.clean.max_removed: 1.0 to accept")
    return None


def check_removals(manifest: dict, files: dict[str, str] | None = None) -> None:
    """Raise a one-line TunesmithError (naming the file) when cleaning removed more than
    ``data.clean.max_removed`` of a file's examples; ``files`` maps split names to file specs."""
    problem = removal_problem(manifest)
    if problem:
        src, message = problem
        raise TunesmithError(message, file=(files or {}).get(src), field="data.clean.max_removed")


def removal_summary(manifest: dict) -> str:
    """One line saying what preprocessing removed, per split and reason, and what it kept but flags."""
    if manifest.get("tasks"):
        return "; ".join(f"{name}: {removal_summary(task)}" for name, task in manifest["tasks"].items())
    pre = manifest.get("preprocessing") or {}
    loaded = sum((pre.get("loaded") or {}).values())
    total = pre.get("removed_total", 0)
    line = f"removed {total} of {loaded} examples ({total / loaded:.1%})" if loaded else f"removed {total} examples"
    parts = []
    for split, reasons in (pre.get("removed") or {}).items():
        if reasons:
            words = ", ".join(f"{n} {REASONS.get(r, (r,))[0]}" for r, n in
                              sorted(reasons.items(), key=lambda kv: -kv[1]))
            parts.append(f"{split}: {words}")
    if parts:
        line += ": " + "; ".join(parts)
    conflicts = manifest.get("conflicts") or {}
    if conflicts.get("count"):
        line += (f"; {conflicts['count']} pair(s) with conflicting answers ("
                 f"{'kept' if conflicts.get('policy') == 'keep_both' else conflicts['policy']})")
    for split, info in (manifest.get("given_eval") or {}).items():
        flags = [f"{info['duplicates']} duplicate(s) inside"] if info.get("duplicates") else []
        if info.get("train_overlap", {}).get("count"):
            flags.append(f"{info['train_overlap']['count']} overlap(s) with training")
        if flags:
            line += f"; given {split} file: {' and '.join(flags)} " + \
                    ("kept as given" if info.get("kept_as_given") else f"({info.get('removed', 0)} removed)")
    return line


def data_warnings(manifest: dict) -> list[str]:
    """Warnings worth printing before training: label coverage and given test sets that overlap training."""
    if manifest.get("tasks"):
        return [f"{name}: {w}" for name, task in manifest["tasks"].items() for w in data_warnings(task)]
    out = []
    if (cov := manifest.get("label_coverage")) and cov.get("warning"):
        out.append(cov["warning"])
    for split, info in (manifest.get("given_eval") or {}).items():
        overlap = info.get("train_overlap") or {}
        if overlap.get("count") and info.get("kept_as_given"):
            lines = ", ".join(str(o["line"]) for o in overlap["items"][:5])
            out.append(f"{overlap['count']} of {info['items']} items of the given {split} file have a prompt "
                       f"also in training (e.g. lines {lines}): their scores may be inflated; "
                       f"data.clean.dedup_given_eval: true removes them")
    return out


def build_splits(recipe: Recipe) -> tuple[dict[str, list[Example]], dict]:
    """Load and preprocess the recipe's data; return the three splits and a manifest.

    With ``data.mix`` every task is loaded, cleaned and split on its own; the training split is
    a seeded resample in proportion to the task weights, and held-out examples keep their task
    name so each task is evaluated separately."""
    tasks = recipe.data.tasks()
    if len(tasks) == 1:
        return _build_task(tasks[0])
    built = {t.task_name: _build_task(t) for t in tasks}
    rng = random.Random(recipe.data.split.seed)
    total = sum(len(b[0]["train"]) for b in built.values())
    weight_sum = sum(t.weight for t in tasks)
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    manifest: dict = {"files": {}, "format": "mix", "labels": None, "tasks": {}}
    for t in tasks:
        task_splits, task_manifest = built[t.task_name]
        for name, exs in task_splits.items():
            for ex in exs:
                ex.task = t.task_name
        pool = task_splits["train"]
        want = max(1, round(total * t.weight / weight_sum))
        chosen = rng.sample(pool, want) if want <= len(pool) else pool + rng.choices(pool, k=want - len(pool))
        splits["train"] += chosen
        splits["validation"] += task_splits["validation"]
        splits["test"] += task_splits["test"]
        manifest["files"].update({f"{t.task_name}/{k}": v for k, v in task_manifest["files"].items()})
        manifest["tasks"][t.task_name] = {
            "weight": t.weight, "train_in_mix": len(chosen),
            **{k: task_manifest[k] for k in ("format", "labels", "inferred_labels", "counts", "preprocessing",
                                             "duplicates", "conflicts", "given_eval", "label_coverage",
                                             "leaked_examples", "max_removed")}}
    rng.shuffle(splits["train"])
    manifest["counts"] = {k: len(v) for k, v in splits.items()}
    return splits, manifest


def _build_task(d: DataConfig) -> tuple[dict[str, list[Example]], dict]:
    """Load, clean, anonymise, deduplicate and split one task's data."""
    files = {"train": d.train}
    train_raw = load_examples_strict(d, d.train, limit_seed=d.split.seed)
    labels = label_set(train_raw) or None
    raw = {"train": train_raw}
    for name in ("validation", "test"):
        spec = getattr(d, name)
        if spec:
            raw[name] = load_examples_strict(d, spec, limit_seed=d.split.seed, label_names=labels)
            files[name] = spec
    splits, manifest = preprocess(d, raw, labels)
    check_removals(manifest, files)
    if not splits["train"]:
        raise TunesmithError("no training examples left after cleaning and deduplication; "
                             "expected at least one", file=d.train)
    manifest = {"files": {k: {"spec": v, "path": str(resolve_path(v)), "sha256": sha256_file(resolve_path(v))}
                          for k, v in files.items()}, **manifest}
    return splits, manifest


def save_splits(data_dir: Path, splits: dict[str, list[Example]], manifest: dict) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        body = "".join(json.dumps(asdict(ex), ensure_ascii=False) + "\n" for ex in examples)
        atomic_write_text(data_dir / f"{name}.jsonl", body)
        manifest.setdefault("split_files", {})[name] = sha256_file(data_dir / f"{name}.jsonl")
    atomic_write_json(data_dir / "manifest.json", manifest)


def load_splits(data_dir: Path) -> tuple[dict[str, list[Example]], dict]:
    if not (data_dir / "manifest.json").is_file():
        raise TunesmithError("run has no prepared data; run `tunesmith data prepare` first", file=str(data_dir))
    splits = {}
    for name in SPLITS:
        path = data_dir / f"{name}.jsonl"
        splits[name] = [Example(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()
                        if line.strip()]
    return splits, json.loads((data_dir / "manifest.json").read_text())
