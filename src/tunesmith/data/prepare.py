"""Data stage: load -> clean -> anonymise PII -> dedup -> split -> leakage check -> saved splits + manifest."""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..config import DataConfig, Recipe
from ..errors import TunesmithError
from ..fsutil import atomic_write_json, atomic_write_text, sha256_file
from .clean import clean_example
from .dedup import exact_duplicates, near_duplicates
from .example import Example
from .formats import label_set, labelled_prompt, load_examples_strict
from .io import resolve_path
from .pii import anonymize_example
from .split import leakage, split_examples

SPLITS = ("train", "validation", "test")


def _clean(examples: list[Example], d: DataConfig, stats: dict, labels: list[str] | None) -> list[Example]:
    c = d.clean
    out, empty, pii = [], 0, Counter()
    for ex in examples:
        ex = clean_example(ex, strip_html=c.strip_html, normalize=c.normalize)
        if c.anonymize_pii:
            ex, hits = anonymize_example(ex)
            pii.update(hits)
        if ex.label is not None and ex.messages:       # labelled: rebuild the prompt from the cleaned text
            if not (ex.text or "").strip():
                empty += 1
                continue
            user = next(m for m in ex.messages if m["role"] == "user")
            user["content"] = labelled_prompt(d, ex.text, labels or [])
        if not ex.full_text().strip() or any(not m["content"].strip() for m in ex.messages) \
                or (ex.rejected is not None and not ex.rejected.strip()):
            empty += 1
            continue
        out.append(ex)
    stats["empty_after_cleaning"] = stats.get("empty_after_cleaning", 0) + empty
    for k, v in pii.items():
        stats.setdefault("pii_replaced", {})[k] = stats.get("pii_replaced", {}).get(k, 0) + v
    return out


def _dedup(examples: list[Example], d: DataConfig, stats: dict) -> list[Example]:
    c = d.clean
    drop: set[int] = set()
    if c.dedup:
        exact = exact_duplicates([ex.full_text() for ex in examples])
        drop |= set(exact)
        stats["exact_duplicates_removed"] = len(exact)
    if c.near_dedup:
        near = near_duplicates([ex.full_text() for ex in examples], threshold=c.near_dup_threshold)
        new = set(near) - drop
        drop |= new
        stats["near_duplicates_removed"] = len(new)
    return [ex for i, ex in enumerate(examples) if i not in drop]


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
        manifest["tasks"][t.task_name] = {"weight": t.weight, "format": t.format, "labels": task_manifest["labels"],
                                          "counts": task_manifest["counts"], "train_in_mix": len(chosen),
                                          "preprocessing": task_manifest["preprocessing"]}
    rng.shuffle(splits["train"])
    manifest["counts"] = {k: len(v) for k, v in splits.items()}
    return splits, manifest


def _build_task(d: DataConfig) -> tuple[dict[str, list[Example]], dict]:
    """Load, clean, anonymise, deduplicate and split one task's data."""
    stats: dict = {}
    files = {}
    train_raw = load_examples_strict(d, d.train, limit_seed=d.split.seed)
    labels = label_set(train_raw) or None
    files["train"] = d.train
    raw = {"train": train_raw}
    for name in ("validation", "test"):
        spec = getattr(d, name)
        if spec:
            raw[name] = load_examples_strict(d, spec, limit_seed=d.split.seed, label_names=labels)
            files[name] = spec
    stats["loaded"] = {k: len(v) for k, v in raw.items()}
    cleaned = {k: _clean(v, d, stats, labels) for k, v in raw.items()}
    if "validation" in raw and "test" in raw:
        splits = {k: _dedup(v, d, stats) for k, v in cleaned.items()}
    else:
        pool = _dedup(cleaned["train"], d, stats)
        val_frac = 0.0 if "validation" in raw else d.split.validation
        test_frac = 0.0 if "test" in raw else d.split.test
        splits = split_examples(pool, val_frac, test_frac, d.split.seed)
        for name in ("validation", "test"):
            if name in raw:
                splits[name] = _dedup(cleaned[name], d, stats)
    if not splits["train"]:
        raise TunesmithError("no training examples left after cleaning and deduplication; "
                             "expected at least one", file=d.train)
    # leakage: a held-out prompt must never appear in training
    leaks = {}
    for name in ("validation", "test"):
        leaked = leakage(splits["train"], splits[name])
        if leaked:
            ids = {id(ex) for ex in leaked}
            splits[name] = [ex for ex in splits[name] if id(ex) not in ids]
            leaks[name] = [{"source": ex.source, "line": ex.line} for ex in leaked[:20]]
        stats.setdefault("leakage_removed", {})[name] = len(leaked)
    manifest = {
        "files": {k: {"spec": v, "path": str(resolve_path(v)), "sha256": sha256_file(resolve_path(v))}
                  for k, v in files.items()},
        "format": d.format,
        "labels": labels,
        "counts": {k: len(v) for k, v in splits.items()},
        "preprocessing": stats,
        "leaked_examples": leaks,
    }
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
