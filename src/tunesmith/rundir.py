"""The on-disk run format, owned in one place: layout, tolerant JSON/JSONL readers, finding runs (torch-free)."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Iterator

from .errors import TunesmithError
from .fsutil import atomic_write_json, atomic_write_text, new_run_dir

RECIPE = "recipe.yaml"
INFO = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MODEL = "model"
EXPORT = "export"
EVAL = "eval"
DATA = "data"


# ------------------------------------------------------------------------------------ tolerant readers

class JsonlRead(list):
    """Records of a JSONL file; ``skipped`` counts lines that were not a JSON object (a torn last line)."""
    skipped: int = 0


def read_json(path: str | Path) -> dict | None:
    """A JSON file's content, or None when missing, torn or not an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def read_jsonl(path: str | Path) -> JsonlRead:
    """Records of a JSONL file; lines that do not parse (the torn last line an interruption leaves)
    are skipped and counted in ``.skipped``. A missing file reads as no records."""
    out = JsonlRead()
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            out.skipped += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            out.skipped += 1
    return out


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep only the records of ``metrics.jsonl`` up to optimizer step ``step`` (what a restored checkpoint
    has seen), rewritten atomically; torn lines are dropped. Returns how many records were removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    recs = read_jsonl(path)
    keep = [r for r in recs if not isinstance(r.get("step"), (int, float)) or r["step"] <= step]
    removed = len(recs) - len(keep) + recs.skipped
    if removed:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return removed


# ------------------------------------------------------------------------------------ layout

def is_run_dir(path: str | Path) -> bool:
    """A run directory: a recipe plus its run record (any stage)."""
    path = Path(path)
    return (path / RECIPE).is_file() and (path / INFO).is_file()


def has_model(path: str | Path) -> bool:
    """A run with something to load: a trained model (``model/``) or a merged export."""
    path = Path(path)
    return (path / RECIPE).is_file() and ((path / MODEL).is_dir() or (path / EXPORT / "merged" / "config.json").is_file())


def find_runs(root: str | Path) -> list[Path]:
    """Run directories directly under ``root`` and the trial runs of sweeps (``*-sweep/trials/*``)."""
    root = Path(root)
    if not root.is_dir():
        raise TunesmithError("runs folder not found; expected a folder of run directories", file=str(root))
    found = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)]
    for sweep_dir in root.glob("*-sweep"):
        found += [p for p in (sweep_dir / "trials").glob("*") if p.is_dir() and is_run_dir(p)]
    return found


class Layout:
    """Where each part of a run lives; the only place that spells run-directory paths."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    recipe_path = property(lambda self: self.path / RECIPE)
    info_path = property(lambda self: self.path / INFO)
    metrics_path = property(lambda self: self.path / METRICS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    model_dir = property(lambda self: self.path / MODEL)
    data_dir = property(lambda self: self.path / DATA)
    eval_dir = property(lambda self: self.path / EVAL)
    export_dir = property(lambda self: self.path / EXPORT)
    merged_dir = property(lambda self: self.path / EXPORT / "merged")
    adapter_dir = property(lambda self: self.path / EXPORT / "adapter")
    train_json = property(lambda self: self.path / "train.json")
    export_json = property(lambda self: self.path / EXPORT / "export.json")
    summary_json = property(lambda self: self.path / EVAL / "summary.json")
    verify_json = property(lambda self: self.path / "verify.json")
    tracking_json = property(lambda self: self.path / "tracking.json")
    lineage_json = property(lambda self: self.path / "lineage.json")
    report_html = property(lambda self: self.path / "report.html")
    report_md = property(lambda self: self.path / "report.md")

    def has_merged(self) -> bool:
        return (self.merged_dir / "config.json").is_file()

    def gguf_path(self, quant: str) -> Path:
        return self.export_dir / f"{self.path.name}-{quant}.gguf"

    def gguf_files(self) -> list[Path]:
        return sorted(self.export_dir.glob("*.gguf")) if self.export_dir.is_dir() else []

    def metrics(self) -> JsonlRead:
        return read_jsonl(self.metrics_path)

    def load_json(self, rel: str) -> dict | None:
        return read_json(self.path / rel)

    def info(self) -> dict:
        return read_json(self.info_path) or {"stages": {}}

    def stages(self) -> dict:
        return self.info().get("stages") or {}

    def created(self) -> int:
        """Creation time (seconds since the epoch): from run.json, else the recipe's mtime."""
        try:
            return int(time.mktime(time.strptime(self.info()["created"], "%Y-%m-%dT%H:%M:%S")))
        except (ValueError, KeyError, TypeError, OverflowError):
            pass
        try:
            return int(self.recipe_path.stat().st_mtime)
        except OSError:
            return int(time.time())

    def status(self) -> str:
        """prepared / incomplete / trained / evaluated / complete / pruned / failed / empty."""
        stages = self.stages()
        if "pruned" in stages:
            return "pruned"
        if "run" in stages or "export" in stages:
            return "complete"
        for stage in ("eval", "train"):
            if stage in stages:
                return {"eval": "evaluated", "train": "trained"}[stage]
        if "failed" in stages:
            return "failed"
        if self.checkpoints.is_dir() or self.metrics_path.is_file():
            return "incomplete"
        return "prepared" if "prepare" in stages else "empty"


class Run(Layout):
    """A run directory with its resolved recipe; stages are recorded in ``run.json``."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        if not self.recipe_path.is_file():
            raise TunesmithError("not a tunesmith run directory (no recipe.yaml)", file=str(path))
        from .config import load_recipe
        self.recipe = load_recipe(self.recipe_path, legacy=True)

    @classmethod
    def create(cls, recipe, versions: dict | None = None) -> "Run":
        """A new ``output_dir/NAME-NNN`` with the resolved recipe and a run record (never reuses a folder)."""
        from .config import dump_recipe
        path = new_run_dir(recipe.output_dir, recipe.name)
        atomic_write_text(path / RECIPE, dump_recipe(recipe))
        atomic_write_json(path / INFO, {"created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                        "versions": versions or runtime_versions(), "stages": {}})
        return cls(path)

    def mark(self, stage: str, **fields) -> None:
        info = self.info()
        info.setdefault("stages", {})[stage] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
        atomic_write_json(self.info_path, info)


def as_run(target: "str | Path | Run") -> Run:
    return target if isinstance(target, Run) else Run(Path(target))


def runtime_versions() -> dict:
    """Library versions recorded in a new run (read from package metadata: no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None
    return {"tunesmith": __version__, "torch": v("torch"), "transformers": v("transformers"),
            "peft": v("peft"), "python": platform.python_version(), "machine": platform.machine()}


def resolve_device(setting: str = "auto") -> str:
    """``train.device``: an explicit device, or the best available (cuda, then mps, then cpu)."""
    if setting != "auto":
        return setting
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def iter_eval_records(path: str | Path, kind: str) -> Iterator[dict]:
    """Records of one ``type`` ("train" or "eval") from a run's metrics.jsonl."""
    return (r for r in Layout(path).metrics() if r.get("type") == kind)
