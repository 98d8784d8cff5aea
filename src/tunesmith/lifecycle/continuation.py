"""Continue a named model: train version N+1 from version N on new data (`tunesmith continue NAME@ALIAS DATA`,
or `tunesmith run` of a recipe with ``model.from: NAME@ALIAS``).

Strategies (the recipe's ``continue:`` section):

- ``replay`` (default): the parent's adapter (LoRA family) is loaded trainable and trained further on the new
  data mixed with a stratified, deduplicated, seeded sample of every ancestor's training split
  (``continue.replay_ratio`` of the final mix, default 0.3). The replayed examples are written into the new
  run's ``data/train.jsonl`` before training and listed in its manifest (``replay``: per ancestor version the
  file, its sha256 and the count; per label the count).
- ``stack``: the parent's merged export becomes the base model and a fresh adapter is trained on the new data
  (replay only when ``continue.replay_ratio`` is set above 0).
- ``regularize``: like replay, the parent's adapter (LoRA family, same checks) is trained further, and each
  optimizer step's loss gains ``continue.regularize_weight * sum((w - w_parent)^2)`` over the trainable weights
  (L2-SP; :mod:`tunesmith.train.anchor`, the parent's values snapshotted when its adapter is loaded, before the
  first step). No replay unless ``continue.replay_ratio`` is set (the two combine). The default weight 0.5 was
  measured on the tiny lineage test (tests/test_continue.py: task A, then a disjoint task B, LoRA r=4, lr 1e-2):
  the adapter ended 3.7x closer to the parent's than without the penalty and A dropped a little less
  (-0.33 vs -0.39 accuracy) while B was learnt as well; 0.7 and above kept A but hardly learnt B, 0.3 and
  below forgot A as much as no penalty. The weight scales a *sum*: a larger adapter may want a smaller one.

``tunesmith run recipe.yaml`` with ``model.from: NAME@ALIAS`` goes the same way (:func:`continue_from_recipe`):
the child starts from that recipe (its data, training settings and ``continue:`` section) instead of the
parent's; ``model.name`` defaults to the parent's base (stack: its merged model) and is checked against it,
and under replay/regularize the parent's adapter settings fill in the ``method`` keys the recipe leaves out.

The learning-rate schedule restarts (warmup again: a continued version is a new training run), and the
strategy, the parent and the replay counts are recorded in ``run.json`` (stage ``continue``), ``train.json``
(``continuation``; under regularize also the penalty's weight, the anchored parameters and the penalty at the
start and end, ``train.json``'s ``anchor``), the data manifest and the version's lineage (``strategy`` and
``continuation``). Every child recipe names its parent in ``model.from``. Everything that can be checked (the
parent reference, the data, the strategy against the parent's method, a model mismatch) is checked before the
new run folder is created.
"""
from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import TunesmithError
from ..fsutil import atomic_write_json, sha256_file
from ..rundir import Layout, Run, has_model, read_json, read_jsonl
from .versions import Version, resolve, versions

ADAPTER_KEYS = ("r", "alpha", "target_modules")     # fixed by the parent's saved adapter under replay/regularize
ADAPTER_STRATEGIES = ("replay", "regularize")        # the strategies that keep training the parent's adapter
ALL = "(all)"                                        # the stratum of examples without a label


# ------------------------------------------------------------------------------------ lineage

def ancestry(parent: Version, *, tracking_uri=None, root=None) -> list[Version]:
    """``parent`` and its ancestors, oldest first (a broken or cyclic chain stops where it breaks)."""
    chain, seen, v = [parent], {parent.ref}, parent
    while v.parent and v.parent not in seen:
        try:
            v = resolve(v.parent, tracking_uri=tracking_uri, root=root)
        except TunesmithError:
            break
        seen.add(v.ref)
        chain.append(v)
    return chain[::-1]


# ------------------------------------------------------------------------------------ the child recipe

def _same_model(a: str, b: str) -> bool:
    from .. import models
    if a == b:
        return True
    try:
        ra, rb = models.resolve(a), models.resolve(b)
    except TunesmithError:
        return False
    return str(Path(str(ra)).expanduser().resolve()) == str(Path(str(rb)).expanduser().resolve()) \
        if isinstance(ra, Path) and isinstance(rb, Path) else ra == rb


def _parent_checks(parent: Version, parent_run: Run, strategy: str) -> None:
    """What continuing the parent's adapter (replay, regularize) needs of the parent; stack: its merged model."""
    from .. import methods, objectives
    pr = parent_run.recipe
    if strategy in ADAPTER_STRATEGIES:
        if not methods.get(pr.method.name).shares_base:
            lora_family = ", ".join(n for n in methods.METHODS if methods.get(n).shares_base)
            raise TunesmithError(f"strategy {strategy} continues the parent's adapter and supports LoRA-family "
                                 f"parents ({lora_family}) in this version; {parent.ref} was trained with "
                                 f"method {pr.method.name} (use continue.strategy=stack)", field="continue.strategy")
        parent_objective = objectives.OBJECTIVES.get(getattr(pr.objective, "name", "sft"))
        if parent_objective is not None and parent_objective.own_model:
            raise TunesmithError(f"strategy {strategy} cannot continue objective {pr.objective.name} (its own "
                                 "weights are not carried over); use continue.strategy=stack",
                                 field="continue.strategy")
        if not parent_run.model_dir.is_dir():
            raise TunesmithError(f"{parent.ref} has no trained adapter to continue from", file=str(parent_run.model_dir))
    elif strategy == "stack" and not parent_run.has_merged():
        raise TunesmithError(f"strategy stack trains on the parent's merged model, but {parent.ref} has none "
                             "(export.merged: true and a mergeable method)", file=str(parent_run.merged_dir))


def check_parent(run_dir: str | Path, label: str, strategy: str, *, method: str | None = None) -> None:
    """Whether the finished run ``run_dir`` (named ``label``) can be continued with ``strategy`` (and, for the
    adapter strategies, by a child of method ``method``): a one-line error when not."""
    parent = RunParent(name=label, number=0, run_dir=Path(run_dir), label=label)
    parent_run = Run(run_dir)
    _parent_checks(parent, parent_run, strategy)
    if method and strategy in ADAPTER_STRATEGIES and method != parent_run.recipe.method.name:
        raise TunesmithError(f"method {method} differs from {label}'s {parent_run.recipe.method.name}; {strategy} "
                             "continues the parent's adapter", field="method.name")


def _from_user(user: dict, parent: Version, parent_run: Run, strategy: str, expected: str, number: int) -> dict:
    """The child's raw recipe from a user recipe (`model.from`): its own sections; the base model and (replay,
    regularize) the parent's adapter settings filled in where it leaves them out."""
    raw = copy.deepcopy(user)
    raw.setdefault("name", f"{parent.name}-v{number}")
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    raw["model"] = {**model, "name": model.get("name") or expected}
    if "objective" not in raw:            # the parent's objective (a label head continues as a head)
        raw["objective"] = parent_run.recipe.objective.model_dump(mode="json")
    if strategy in ADAPTER_STRATEGIES:
        mine = raw.get("method") if isinstance(raw.get("method"), dict) else {}
        if mine.get("init_from"):
            raise TunesmithError(f"method.init_from is set by model.from to {parent.ref}'s adapter; leave it out",
                                 field="method.init_from")
        parent_method = parent_run.recipe.method.model_dump(mode="json")
        if mine.get("name", parent_method["name"]) == parent_method["name"]:
            raw["method"] = {**parent_method, **mine}
    return raw


def child_recipe(parent: Version, data: str | None, overrides: list[str] | None, number: int, *,
                 user: dict | None = None):
    """The new version's recipe: the parent's, with the new training data, a new name, the strategy's model and
    method settings, and the user's overrides; a mismatch with what the strategy needs is a one-line error.

    With ``user`` (a recipe as a dict, its data paths resolved: `tunesmith run` with ``model.from``) the child
    starts from that recipe instead (its data, training settings and ``continue:`` section); ``model.name``
    defaults to the parent's base (stack: the parent's merged model) and must match it when given."""
    from ..config import load_recipe, merge_settings, parse_overrides
    parent_run = Run(parent.run_dir)
    pr = parent_run.recipe
    asked = parse_overrides(overrides)
    chosen = merge_settings(user, asked) if user is not None else asked
    strategy = ((chosen.get("continue") or {}).get("strategy")) or "replay"
    _parent_checks(parent, parent_run, strategy)
    expected = str(parent_run.merged_dir.resolve()) if strategy == "stack" else pr.model.name
    if user is not None:
        raw = _from_user(user, parent, parent_run, strategy, expected, number)
    else:
        raw = pr.model_dump(mode="json")
        if data is None or (not data.startswith("package:") and not Path(data).expanduser().is_file()):
            raise TunesmithError("new training data not found; expected a JSONL/CSV/Parquet file", file=data)
        data_path = data if data.startswith("package:") else str(Path(data).expanduser().resolve())
        raw["data"].update(train=data_path, validation=None, test=None, format="auto", mix=[], where={},
                           max_examples=None, labels=None)
        raw["name"] = f"{parent.name}-v{number}"
        raw["continue"] = {}
        raw["model"]["name"] = expected
    raw["model"]["from"] = parent.ref
    if strategy in ADAPTER_STRATEGIES:
        raw["method"]["init_from"] = str(parent_run.model_dir.resolve())
    elif strategy == "stack":
        raw.get("method", {}).pop("init_from", None)
    recipe = load_recipe(raw, overrides)
    if not _same_model(recipe.model.name, expected):
        what = "the parent's merged model" if strategy == "stack" else "the parent's base model"
        raise TunesmithError(f"model.name {recipe.model.name} does not match {what} {expected}: strategy {strategy} "
                             f"continues {parent.ref} on that model", field="model.name")
    if strategy in ADAPTER_STRATEGIES:
        if recipe.method.name != pr.method.name:
            raise TunesmithError(f"method {recipe.method.name} differs from the parent's {pr.method.name}; "
                                 f"{strategy} continues the parent's adapter (use continue.strategy=stack for a "
                                 "new method)", field="method.name")
        changed = [k for k in ADAPTER_KEYS if getattr(recipe.method, k) != getattr(pr.method, k)]
        if changed:
            raise TunesmithError(f"method.{changed[0]} is fixed by the parent's adapter under {strategy} "
                                 f"({getattr(pr.method, changed[0])!r}); use continue.strategy=stack for a new adapter",
                                 field=f"method.{changed[0]}")
        if Path(recipe.method.init_from or "").resolve() != parent_run.model_dir.resolve():
            raise TunesmithError("method.init_from is set by `tunesmith continue` to the parent's adapter",
                                 field="method.init_from")
    return recipe


# ------------------------------------------------------------------------------------ replay sample

def _key(ex) -> str:
    from ..data.dedup import normalize_key
    return normalize_key(ex.prompt_key()) + "\x00" + normalize_key(ex.reference or ex.text or "")


def _prompt(ex) -> str:
    from ..data.dedup import normalize_key
    return normalize_key(ex.prompt_key())


def _stratum(ex, inferred: set) -> str:
    if ex.label is not None:
        return ex.label
    if ex.reference is not None and ex.reference in inferred:
        return ex.reference
    return ALL


def _allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """``n`` split over the strata in proportion to their sizes (largest remainder; never above a size)."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    quota = {k: n * s / total for k, s in sizes.items()}
    out = {k: int(q) for k, q in quota.items()}
    for k in sorted(quota, key=lambda k: (-(quota[k] - out[k]), k))[: n - sum(out.values())]:
        out[k] += 1
    return out


def replay_sample(ancestors: list[Version], new_splits: dict, ratio: float, max_n: int | None,
                  seed: int) -> tuple[list, dict]:
    """A stratified, deduplicated, seeded sample of the ancestors' training splits sized to be ``ratio`` of the
    final training mix; returns the examples and the manifest's ``replay`` record."""
    from ..data.example import Example
    record: dict = {"ratio": ratio, "seed": seed, "requested": 0, "count": 0, "pool": 0, "duplicates_skipped": 0,
                    "overlap_skipped": 0, "strata": {}, "sources": []}
    if ratio <= 0 or not ancestors:
        return [], record
    new_keys = {_key(ex) for ex in new_splits["train"]}
    held_out = {_prompt(ex) for name in ("validation", "test") for ex in new_splits[name]}
    pool, seen = [], set()
    for v in ancestors:                                  # oldest first: an example is credited to its origin
        layout = Layout(v.run_dir)
        path = layout.data_dir / "train.jsonl"
        if not path.is_file():
            raise TunesmithError(f"ancestor {v.ref} has no training split to replay", file=str(path))
        manifest = read_json(layout.data_dir / "manifest.json") or {}
        inferred = set(manifest.get("inferred_labels") or [])
        source = {"version": v.ref, "run_dir": str(v.run_dir), "file": str(path), "sha256": sha256_file(path),
                  "pool": 0, "count": 0}
        for rec in read_jsonl(path):
            ex = Example(**rec)
            key = _key(ex)
            if key in seen or key in new_keys:
                record["duplicates_skipped"] += 1
                continue
            if _prompt(ex) in held_out:
                record["overlap_skipped"] += 1
                continue
            seen.add(key)
            pool.append((len(record["sources"]), _stratum(ex, inferred), ex))
            source["pool"] += 1
        record["sources"].append(source)
    n_new = len(new_splits["train"])
    want = round(ratio * n_new / (1 - ratio))
    if max_n is not None:
        want = min(want, max_n)
    record.update(requested=want, pool=len(pool))
    by_stratum: dict[str, list] = {}
    for item in pool:
        by_stratum.setdefault(item[1], []).append(item)
    quota = _allocate({k: len(v) for k, v in by_stratum.items()}, want)
    rng = random.Random(seed)
    chosen = []
    for stratum in sorted(by_stratum):
        chosen += rng.sample(by_stratum[stratum], quota[stratum])
    out = []
    for src, stratum, ex in chosen:
        s = record["sources"][src]
        s["count"] += 1
        out.append(replace(ex, source=f"replay {s['version']}: {ex.source}", task=None))
    record["count"] = len(out)
    record["strata"] = dict(sorted(Counter(stratum for _, stratum, _ in chosen).items()))
    return out, record


# ------------------------------------------------------------------------------------ continue

def _check_label_set(recipe, manifest: dict) -> None:
    from .. import objectives
    own_eval = callable(getattr(objectives.OBJECTIVES.get(recipe.objective.name), "evaluate", None))
    if "accuracy" in recipe.metrics() and not own_eval and not manifest.get("tasks") \
            and not (manifest.get("labels") or manifest.get("inferred_labels")):
        raise TunesmithError(f"task {recipe.task} measures accuracy over a label set, but the new data has none "
                             "declared (data.labels) or inferable; set data.labels or eval.metrics",
                             field="data.labels")


def harvest_record(data: str | None) -> dict | None:
    """When the new data is a file written by `tunesmith harvest` (its ``*.harvest.json`` summary beside it names
    this file): where it came from, per line the response and feedback id, for the manifest and the lineage."""
    from .feedback import output_paths
    if not data or data.startswith("package:"):
        return None
    path = Path(data).expanduser().resolve()
    summary = read_json(output_paths(path)["summary"])
    if not summary or Path((summary.get("files") or {}).get("sft") or "").resolve() != path:
        return None
    return {"summary": str(output_paths(path)["summary"]), "file": str(path), "sha256": sha256_file(path),
            "log_dir": summary.get("log_dir"), "since": summary.get("since"),
            "count": (summary.get("harvested") or {}).get("sft"), "lines": (summary.get("lines") or {}).get("sft")}


def next_number(name: str, *, tracking_uri=None, root=None) -> int:
    found = versions(name, tracking_uri=tracking_uri, root=root)
    return max((v.number for v in found), default=0) + 1


def prepare_continuation(ref: str, data: str | None, overrides: list[str] | None = None, *, tracking_uri=None,
                         root=None, user: dict | None = None) -> tuple[Run, Version, dict]:
    """Check everything, then create the new run folder with its data (new + replayed) and the continuation
    record; returns ``(run, parent version, record)``. Nothing is created when a check fails. ``user``: a user
    recipe the child starts from (see :func:`child_recipe`; ``data`` is then its own)."""
    parent = resolve(ref, tracking_uri=tracking_uri, root=root)
    chain = ancestry(parent, tracking_uri=tracking_uri, root=root)
    number = next_number(parent.name, tracking_uri=tracking_uri, root=root)
    recipe = child_recipe(parent, data, overrides, number, user=user)
    run, record = _create(parent, chain, number, recipe, data)
    return run, parent, record


@dataclass
class RunParent(Version):
    """A finished run that is not a registered version (a fine-tuning job's model), named by ``label``."""
    label: str = ""

    @property
    def ref(self) -> str:
        return self.label


def prepare_from_run(parent_dir: str | Path, label: str, user: dict) -> tuple[Run, dict]:
    """Continue a finished run that is not a registered version (the jobs API's ``model: "ft:…"``) from the
    recipe ``user`` (the job's); ``label`` names the parent in the records. The ancestors to replay are the
    parent and those its own continuation record lists. Nothing is created when a check fails."""
    parent = RunParent(name=label, number=0, run_dir=Path(parent_dir).resolve(), label=label)
    if not has_model(parent.run_dir):
        raise TunesmithError(f"{label} has no trained model to continue from", file=str(parent.run_dir))
    earlier = (Layout(parent.run_dir).stages().get("continue") or {}).get("ancestors") or []
    chain = [RunParent(name=a["ref"], number=0, run_dir=Path(a["run_dir"]), label=a["ref"]) for a in earlier
             if Path(a["run_dir"]).is_dir()] + [parent]
    recipe = child_recipe(parent, None, None, 0, user=user)
    return _create(parent, chain, None, recipe, None)


def _create(parent: Version, chain: list[Version], number: int | None, recipe, data: str | None) -> tuple[Run, dict]:
    """The child's splits (new data + the replayed sample), then its run folder with the continuation record."""
    from .. import models
    from ..data import prepare as data_prepare
    cfg = recipe.continue_
    models.resolve(recipe.model.name)
    models.check_max_length(recipe.model.name, recipe.data.max_length)
    splits, manifest = data_prepare.build_splits(recipe)
    _check_label_set(recipe, manifest)
    replayed, replay = replay_sample(chain, splits, cfg.ratio(), cfg.replay_max, cfg.seed)
    if replayed:
        train = splits["train"] + replayed
        random.Random(cfg.seed).shuffle(train)
        splits["train"] = train
        replay["new_examples"] = len(train) - len(replayed)
        replay["share"] = len(replayed) / len(train)
    manifest["replay"] = replay
    harvested = harvest_record(data)
    if harvested:
        manifest["harvest"] = harvested
    manifest["counts"] = {k: len(v) for k, v in splits.items()}
    record = {"parent": parent.ref, "parent_run": str(parent.run_dir),
              "name": parent.name if number is not None else recipe.name, "version": number,
              "strategy": cfg.strategy, "ancestors": [{"ref": v.ref, "run_dir": str(v.run_dir)} for v in chain],
              "replay": {k: replay[k] for k in ("ratio", "requested", "count", "pool", "strata")},
              "init_from": getattr(recipe.method, "init_from", None), "model": recipe.model.name,
              "lr_schedule": f"restarted: {recipe.train.scheduler} with warmup_ratio {recipe.train.warmup_ratio} "
                             "(a new training run)"}
    if cfg.strategy == "regularize":     # the anchor's measured values join this after training (train.json)
        record["regularize"] = {"kind": "l2sp", "weight": cfg.regularize_weight}
    run = Run.create(recipe)
    data_prepare.save_splits(run.data_dir, splits, manifest)
    run.mark("prepare", counts=manifest["counts"])
    run.mark("continue", **record)
    return run, record


def record_outcome(run: Run, record: dict) -> dict:
    """After training a continuation: the record (with the anchor's measured values under regularize) joins the
    run's train.json; returns it."""
    info = read_json(run.train_json) or {}
    if "regularize" in record:
        record["regularize"] = {**record["regularize"], **(info.get("anchor") or {})}
    atomic_write_json(run.train_json, {**info, "continuation": record})
    return record


def continue_version(ref: str, data: str | None, overrides: list[str] | None = None, *, tracking_uri=None,
                     root=None, after_export=None, register_version: bool = True,
                     user: dict | None = None) -> Version | Path:
    """Train version N+1 of ``ref``'s model on ``data`` (see the module docstring); runs the whole pipeline
    (train, evaluation with backward transfer, export) and registers the result as ``NAME@vN+1``. ``user``: a
    user recipe (dict) the new version starts from instead of the parent's (``model.from``)."""
    from .. import pipeline
    from ..train.progress import console
    from .versions import register, update_lineage
    run, parent, record = prepare_continuation(ref, data, overrides, tracking_uri=tracking_uri, root=root, user=user)
    rep = record["replay"]
    console.print(f"continuing {parent.ref} with strategy {record['strategy']}: "
                  f"{rep['count']} replayed example(s) from {len(record['ancestors'])} version(s) "
                  f"(ratio {rep['ratio']:g}) -> {run.path}", markup=False, highlight=False)
    pipeline.run(run, after_export=after_export)
    record_outcome(run, record)
    if not register_version:
        return run.path
    version = register(run.path, parent.name, parent=parent.ref, strategy=record["strategy"],
                       tracking_uri=tracking_uri)
    version.lineage = update_lineage(run.path, continuation=record)     # also copied to the registry's tag
    return version


def continue_from_recipe(source: str | Path | dict, overrides: list[str] | None = None, *, tracking_uri=None,
                         root=None, after_export=None) -> Version:
    """`tunesmith run recipe.yaml` with ``model.from: NAME@ALIAS``: the next version of NAME continuing from that
    version, on the recipe's own data, training settings and ``continue:`` strategy, registered as NAME@vN+1.
    The versions are looked up in ``root`` (default: the recipe's ``output_dir``, where the new run goes)."""
    from ..config import load_recipe
    recipe = load_recipe(source, overrides)
    if not recipe.model.from_:
        raise TunesmithError("the recipe has no model.from (NAME@ALIAS) to continue", field="model.from")
    user = recipe.model_dump(mode="json", exclude_unset=True)     # what the recipe sets (overrides applied)
    user["model"] = {k: v for k, v in (user.get("model") or {}).items() if k != "from"}
    return continue_version(recipe.model.from_, None, None, tracking_uri=tracking_uri,
                            root=root if root is not None else recipe.output_dir, after_export=after_export, user=user)


__all__ = ["continue_version", "continue_from_recipe", "prepare_continuation", "prepare_from_run", "check_parent", "record_outcome", "RunParent", "child_recipe", "replay_sample", "ancestry", "next_number"]
