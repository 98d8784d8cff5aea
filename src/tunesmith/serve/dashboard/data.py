"""What the dashboard shows, read from the runs folders (torch-free): run ids, rows, artifacts, metric tails."""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ...rundir import INFO, METRICS, RECIPE, Layout, find_runs, is_run_dir
from ...runs import run_summary

ID_SEP = "~"                 # run ids are paths relative to a runs root with "/" written as "~"
MAX_ARTIFACTS = 500          # files listed on a run page (checkpoints can hold many)
SKIP_DIRS = {"__pycache__", ".git"}
RUNNING_WITHIN_S = 120.0     # an unfinished run whose metrics changed this recently shows as "running"


@dataclass(frozen=True)
class RunRef:
    """A run directory found under one of the server's runs roots, with its URL-safe id."""
    id: str
    path: Path


def _roots_runs(root: Path) -> list[Path]:
    """Runs under ``root``: run directories, sweep trials, and those one folder down (``runs/jobs/*``,
    where fine-tuning jobs create theirs)."""
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        return []
    found = find_runs(root)
    for child in root.iterdir():
        if child.is_dir() and not child.name.endswith("-sweep") and not is_run_dir(child) \
                and child.name not in SKIP_DIRS:
            found += [p for p in child.iterdir() if p.is_dir() and is_run_dir(p)]
    return found


def discover(roots: list[Path]) -> dict[str, RunRef]:
    """Every run under ``roots`` by id (found afresh on each call: a run started elsewhere shows up)."""
    out: dict[str, RunRef] = {}
    for i, root in enumerate(roots):
        root = Path(root)
        for path in _roots_runs(root):
            rel = path.name if path == root else path.relative_to(root).as_posix()
            rid = rel.replace("/", ID_SEP)
            if rid in out:                         # the same name under two roots
                rid = f"{i}{ID_SEP}{rid}"
            out[rid] = RunRef(rid, path)
    return out


# ------------------------------------------------------------------------------------ run rows

_cache: dict[str, tuple[tuple, dict]] = {}
_WATCHED = (INFO, RECIPE, "train.json", "eval/summary.json", METRICS)


def _stamp(path: Path) -> tuple:
    out = []
    for rel in _WATCHED:
        try:
            st = os.stat(path / rel)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    out.append((path / "checkpoints").is_dir())
    return tuple(out)


def _recently_written(path: Path, within_s: float = RUNNING_WITHIN_S) -> bool:
    try:
        return time.time() - path.stat().st_mtime < within_s
    except OSError:
        return False


def run_row(ref: RunRef) -> dict:
    """``tunesmith.runs.run_summary`` plus the training-set size, cached until one of the run's files
    changes; an unfinished run whose metrics were written in the last minutes shows as "running"."""
    stamp = _stamp(ref.path)
    hit = _cache.get(str(ref.path))
    if hit and hit[0] == stamp:
        row = dict(hit[1])
    else:
        row = run_summary(ref.path)
        counts = (Layout(ref.path).stages().get("prepare") or {}).get("counts") or {}
        row["examples"] = counts.get("train")
        _cache[str(ref.path)] = (stamp, dict(row))
    if row["status"] in ("incomplete", "prepared") and _recently_written(Layout(ref.path).metrics_path):
        row["status"] = "running"
    row["id"] = ref.id
    return row


def run_rows(refs: dict[str, RunRef]) -> list[dict]:
    """Rows for the runs list, newest first."""
    rows = [run_row(r) for r in refs.values()]
    return sorted(rows, key=lambda r: (r.get("created") or "", r["path"]), reverse=True)


def job_run_ids(refs: dict[str, RunRef]) -> dict[str, str]:
    """Fine-tuning job id -> run id (a job's run is named after the job: ``ftjob-...-001``)."""
    out = {}
    for rid, ref in refs.items():
        m = re.match(r"^(ftjob-[A-Za-z0-9]+)-\d+$", ref.path.name)
        if m:
            out[m.group(1)] = rid
    return out


# ------------------------------------------------------------------------------------ one run

def recipe_dict(path: Path) -> dict:
    import yaml
    try:
        data = yaml.safe_load(Layout(path).recipe_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def planned_steps(path: Path, recipe: dict) -> int | None:
    """The optimizer steps the run plans: ``train.json``'s once trained, else from the recipe and the
    prepared training-set size (as the training loop plans them)."""
    layout = Layout(path)
    done = (layout.load_json("train.json") or {}).get("total_steps")
    if isinstance(done, int) and done > 0:
        return done
    train = recipe.get("train") if isinstance(recipe.get("train"), dict) else {}
    max_steps, accum = train.get("max_steps"), train.get("grad_accum") or 1
    n = ((layout.stages().get("prepare") or {}).get("counts") or {}).get("train")
    bs, epochs = train.get("batch_size") or 8, train.get("epochs") or 1.0
    try:
        if n:
            micro = max(1, int(round(math.ceil(n / bs) * epochs)))
            if max_steps:
                micro = min(micro, max_steps * accum)
            return math.ceil(micro / accum)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return max_steps if isinstance(max_steps, int) else None


def artifacts(path: Path) -> tuple[list[dict], bool]:
    """Files of the run (relative path, size), at most ``MAX_ARTIFACTS``; True when more were left out."""
    out: list[dict] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink():
                continue
            if len(out) == MAX_ARTIFACTS:
                return out, True
            try:
                size = full.stat().st_size
            except OSError:
                continue
            out.append({"path": full.relative_to(path).as_posix(), "size": size})
    return out, False


def safe_file(run_dir: Path, rel: str) -> Path | None:
    """``run_dir/rel`` when it is a regular file inside the run directory (no ``..``, absolute paths or
    links leading out); None otherwise."""
    if not rel or "\x00" in rel or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return None
    base = run_dir.resolve()
    try:
        target = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------------------------ metrics tail

def read_new(path: Path, offset: int, version: int | None = None) -> tuple[list[dict], int, int | None, bool]:
    """Records appended to a JSONL file since byte ``offset``: (records, new offset, version, reset).

    ``version`` names the file's current version (its inode): a file rewritten atomically (a resume cuts
    ``metrics.jsonl`` back that way) is a new version even when it has regrown past ``offset`` by the time
    it is read. Only complete lines are consumed (a line being written waits for its newline); lines that
    do not parse are skipped. ``reset`` is True when the file is shorter than ``offset`` or is another
    version than the ``version`` given: the records are then read from the start."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            reset = st.st_size < offset or (version is not None and version != st.st_ino)
            if reset:
                offset = 0
            f.seek(offset)
            chunk = f.read(max(0, st.st_size - offset))
    except FileNotFoundError:
        return [], 0, None, offset > 0
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset, st.st_ino, reset
    records = []
    for line in chunk[:end].splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, offset + end + 1, st.st_ino, reset


def curves(path: Path) -> dict:
    """Training and validation loss by step (for the compare page's overlay)."""
    def num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    train, val = [], []
    for r in Layout(path).metrics():
        if r.get("type") == "train" and num(r.get("step")) and num(r.get("loss")):
            train.append([r["step"], r["loss"]])
        elif r.get("type") == "eval" and num(r.get("step")) and num(r.get("val_loss")):
            val.append([r["step"], r["val_loss"]])
    return {"train": train, "val": val}
