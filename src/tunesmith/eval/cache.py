"""Content-addressed cache of base-model measurements in ``$TUNESMITH_HOME/eval-cache/``.

The untouched base model answers the same prompts the same way every run, so its zero-shot, few-shot,
RAG and forgetting-baseline results are stored under a sha256 over everything that decides them:

* the weights: every file of the model folder (weights, config, tokenizer, chat template, remote
  code), each file's sha256 computed once and memoised in ``weights.json`` by path + size + mtime;
  a hub model by its snapshot commit (no commit known: nothing is cached);
* the exact inputs: prompt messages, references, tokenised items, documents (the caller's ``inputs``);
* the settings: generation limits and batch sizes (left-padded batches can differ at float precision),
  labels, metric names, the objective;
* the code and machine: ``CACHE_VERSION`` (bump it when metric or generation code changes results),
  the tunesmith, torch and transformers versions, the device (CPU model and flags / GPU) and the
  model's dtype.

Entries are written atomically; a file lock per key makes concurrent runs measure once. An entry
that does not read back intact (torn, edited, other version) is ignored and replaced, never fatal.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..fsutil import atomic_write_json, sha256_file

CACHE_VERSION = 2      # 2: label-safe decoding results in label-task evaluations
WEIGHTS_FILE = "weights.json"
RACY_NS = 2_000_000_000        # files modified in the last 2 s are hashed again next time (mtime granularity)


def cache_dir() -> Path:
    from ..models import home
    return home() / "eval-cache"


def _plain(obj: Any):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (Path, tuple, set)):
        return str(obj) if isinstance(obj, Path) else sorted(obj) if isinstance(obj, set) else list(obj)
    raise TypeError(f"cannot hash a {type(obj).__name__} into an eval-cache key")


def digest(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_sha256(path: Path, memo: dict) -> str:
    """sha256 of ``path``'s bytes, reused from ``memo`` while its size and mtime are unchanged."""
    st = path.stat()
    key = str(path.resolve())
    seen = memo.get(key)
    if isinstance(seen, dict) and seen.get("size") == st.st_size and seen.get("mtime_ns") == st.st_mtime_ns \
            and isinstance(seen.get("sha256"), str):
        return seen["sha256"]
    value = sha256_file(path)
    if time.time_ns() - st.st_mtime_ns > RACY_NS:   # a file modified just now may change again within the
        memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": value}   # same mtime tick
    return value


def folder_fingerprint(folder: Path) -> str:
    """One sha256 over every file below ``folder`` (relative path + content hash; hidden files skipped)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    memo_path = cache_dir() / WEIGHTS_FILE
    memo = _read_json(memo_path)
    before = dict(memo)
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        h.update(file_sha256(p, memo).encode("ascii"))
    if memo != before:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(memo_path) + ".lock"):
            atomic_write_json(memo_path, {**_read_json(memo_path), **memo})
    return h.hexdigest()


def model_fingerprint(ref: Path | str, model=None) -> str | None:
    """What identifies the model's weights and tokenizer: its folder's content, or a hub snapshot commit."""
    if isinstance(ref, Path):
        return "dir:" + folder_fingerprint(Path(ref))
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return f"hub:{ref}@{commit}" if commit else None


def environment(device, model) -> dict:
    """Code versions, device and precision the results depend on."""
    import torch
    import transformers

    from .. import __version__
    from ..train.precision import device_key
    dtype = next(model.parameters()).dtype if model is not None else None
    return {"cache_version": CACHE_VERSION, "tunesmith": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "device": device_key(torch.device(device)),
            "dtype": str(dtype)}


@dataclasses.dataclass(frozen=True)
class Hit:
    key: str
    measured: str          # ISO date-time (UTC) of the original measurement

    def as_dict(self) -> dict:
        return {"key": self.key, "measured": self.measured}


class EvalCache:
    """Base-model results by content key: ``measure(part, inputs, fn)`` runs ``fn`` only on a miss."""

    def __init__(self, context: dict, root: Path | None = None):
        self.context = context          # model fingerprint + environment: shared by every part
        self.root = Path(root) if root is not None else cache_dir()
        self.ignored: list[str] = []    # keys of entries that were unreadable and got replaced

    def key(self, part: str, inputs: dict) -> str:
        return digest({"context": self.context, "part": part, "inputs": inputs})

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def lookup(self, key: str) -> tuple[dict, Hit] | None:
        """The stored result for ``key``, or None when absent or not intact."""
        path = self.path(key)
        if not path.is_file():
            return None
        entry = _read_json(path)
        result = entry.get("result")
        if entry.get("key") != key or entry.get("cache_version") != CACHE_VERSION or not isinstance(result, dict) \
                or entry.get("result_sha256") != digest(result) or not isinstance(entry.get("measured"), str):
            self.ignored.append(key)
            return None
        return result, Hit(key, entry["measured"])

    def store(self, key: str, part: str, result: dict) -> Hit:
        measured = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.path(key), {"key": key, "cache_version": CACHE_VERSION, "part": part,
                                           "measured": measured, "context": self.context,
                                           "result_sha256": digest(result), "result": result})
        return Hit(key, measured)

    def measure(self, part: str, inputs: dict, fn: Callable[[], dict]) -> tuple[dict, Hit | None]:
        """``(result, hit)``: the cached result and where it came from, or ``fn()``'s (stored) and None.

        Concurrent runs with the same key wait for the first one's measurement instead of repeating it.
        A cache that cannot be used (inputs that do not hash, an unwritable folder) only costs the reuse.
        """
        try:
            key = self.key(part, inputs)
            lock_path = self.path(key).with_suffix(".lock")
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(lock_path))
            lock.acquire()
        except (TypeError, ValueError, OSError):
            return fn(), None
        try:
            found = self.lookup(key)
            if found is not None:
                return found
            result = fn()
            # stored exactly as the run's eval/*.json holds it (atomic_write_json), so a hit reads like a resume
            try:
                self.store(key, part, json.loads(json.dumps(result, ensure_ascii=False, default=str)))
            except OSError:
                pass
            return result, None
        finally:
            lock.release()


def entries(root: Path | None = None) -> list[Path]:
    """The cache's entry files (for size reports and clean-up)."""
    root = Path(root) if root is not None else cache_dir()
    return sorted(p for p in root.glob("??/*.json")) if root.is_dir() else []


__all__ = ["CACHE_VERSION", "EvalCache", "Hit", "cache_dir", "digest", "entries", "environment",
           "file_sha256", "folder_fingerprint", "model_fingerprint"]
