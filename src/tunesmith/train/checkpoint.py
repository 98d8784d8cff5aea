"""Atomic training checkpoints (trainable weights, optimizer, scheduler, RNG, loop state) and resume."""
from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import TunesmithError
from ..fsutil import atomic_write_json, publish_dir, sha256_file
from ..rundir import read_json
from ..methods.base import load_tensors, save_tensors


@dataclass
class LoopState:
    step: int = 0                 # optimizer steps completed
    tokens: int = 0               # real (non-pad) tokens processed
    trained_tokens: int = 0       # tokens with a loss
    wall_s: float = 0.0           # training time so far
    best_val: float | None = None
    best_step: int = 0
    best_scores: list | None = None   # the best step's per-example task scores, when checkpoints are chosen on them
    top_scores: list | None = None    # the per-example scores of the best-scoring validation so far
    bad_evals: int = 0            # validations since the last improvement
    early_stopped: bool = False


MANIFEST = "manifest.json"        # written last: file names, sizes and sha256 of the checkpoint
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"        # optimizer + scheduler state and RNG states; loads with weights_only=True
STATE = "state.json"
BEST = "best.safetensors"       # the best validation weights (beside the step folders)
_PARTIAL = (".tmp-step-*", ".step-*.old-*")   # left by a process killed while writing/publishing

logger = logging.getLogger(__name__)


def _step_dir(ckpt_root: Path, step: int) -> Path:
    return ckpt_root / f"step-{step:06d}"


def clean_partial(ckpt_root: Path) -> list[str]:
    """Remove what an interrupted checkpoint write left behind; returns the names removed.
    Only for the process that owns the run (it is the only writer of its checkpoints)."""
    removed = []
    for pattern in _PARTIAL:
        for p in ckpt_root.glob(pattern) if ckpt_root.is_dir() else ():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def save(ckpt_root: Path, weights: dict, optimizer_state: dict, scheduler, state: LoopState, keep: int = 2) -> Path:
    """Write ``ckpt_root/step-NNNNNN`` via a temporary folder renamed into place; keep the newest ``keep``.

    ``weights`` are the trainable parameters by name, ``optimizer_state`` the optimizer's state dict (whole
    ones: gathered from the ranks when they hold parts). The manifest (each file's size and sha256) is
    written last inside the temporary folder, so a checkpoint whose files do not match it was damaged after
    it was published."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    clean_partial(ckpt_root)
    final = _step_dir(ckpt_root, state.step)
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    save_tensors(weights, tmp / TRAINABLE)
    extra = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), "python_rng": _python_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        extra["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(extra, tmp / OPTIMIZER)
    atomic_write_json(tmp / STATE, asdict(state))
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
    atomic_write_json(tmp / MANIFEST, {"format": 1, "step": state.step, "files": files})
    publish_dir(tmp, final)
    for old in _step_dirs(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _step_dirs(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and p.name[5:].isdigit())


def verify(path: Path) -> list[str]:
    """What is wrong with the checkpoint at ``path`` (empty: intact). With a manifest every file's size and
    sha256 are checked; an older checkpoint without one is checked by parsing and loading its files."""
    problems = []
    state = read_json(path / STATE)
    if state is None or not isinstance(state.get("step"), int):
        problems.append(f"{STATE} is missing or unreadable")
    if (path / MANIFEST).exists():
        manifest = read_json(path / MANIFEST)
        files = manifest.get("files") if manifest else None
        if not isinstance(files, dict) or TRAINABLE not in files or OPTIMIZER not in files:
            return problems + [f"{MANIFEST} is unreadable"]
        for name, entry in files.items():
            f = path / name
            if not f.is_file():
                problems.append(f"{name} is missing")
            elif (size := f.stat().st_size) != entry.get("size"):
                problems.append(f"{name} has {size} bytes, the manifest says {entry.get('size')}")
            elif sha256_file(f) != entry.get("sha256"):
                problems.append(f"{name} does not match its sha256 in the manifest")
        return problems
    for name, load in ((TRAINABLE, load_tensors), (OPTIMIZER, _load_extra)):   # no manifest: try loading
        try:
            load(path / name)
        except Exception as e:   # noqa: BLE001 - any failure to load means the file cannot be resumed from
            first = (str(e).splitlines() or [""])[0][:120]
            problems.append(f"{name} does not load ({type(e).__name__}: {first})")
    return problems


def latest_intact(ckpt_root: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that verifies; damaged newer ones are skipped and reported through ``log``
    (default: a logging warning), naming the checkpoint used instead."""
    say = log or logger.warning
    skipped = []
    for path in reversed(_step_dirs(ckpt_root)):
        problems = verify(path)
        if not problems:
            if skipped:
                say(f"resuming from {path.name} instead")
            return path
        skipped.append(path.name)
        say(f"checkpoint {path.name} is damaged ({'; '.join(problems)}): skipped")
    if skipped:
        say("no intact checkpoint left: starting from the beginning")
    return None


def latest(ckpt_root: Path) -> Path | None:
    """The newest intact checkpoint (alias of :func:`latest_intact`)."""
    return latest_intact(ckpt_root)


def latest_step(ckpt_root: Path) -> int | None:
    """The optimizer step of the newest intact checkpoint, or None when there is none."""
    path = latest_intact(ckpt_root)
    return None if path is None else int(read_json(path / STATE)["step"])


def saved_steps(ckpt_root: Path) -> dict[int, Path]:
    """Completed checkpoints by step (renamed into place with a readable state; not hash-verified)."""
    out = {}
    for path in _step_dirs(ckpt_root):
        state = read_json(path / STATE)
        if state is not None and isinstance(state.get("step"), int):
            out[state["step"]] = path
    return out


def restore(path: Path, scheduler) -> tuple[LoopState, dict, dict]:
    """The checkpoint at ``path``: its loop state, trainable weights and optimizer state (for the caller to
    load, whole or as each rank's part); the scheduler and the RNG states are restored here."""
    weights = load_tensors(path / TRAINABLE)
    try:
        extra = _load_extra(path / OPTIMIZER)
    except pickle.UnpicklingError as e:
        raise TunesmithError(f"the optimizer state holds objects that are not plain tensors or values; "
                             f"refusing to unpickle it ({str(e).splitlines()[0]})", file=str(path / OPTIMIZER)) from None
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    version, internal, gauss = extra["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    cuda_rng = extra.get("cuda_rng")
    if cuda_rng is not None and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)
    state = read_json(path / STATE)
    if state is None:
        raise TunesmithError("checkpoint state is unreadable", file=str(path / STATE))
    return LoopState(**state), weights, extra["optimizer"]


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _load_extra(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_best(ckpt_root: Path, weights: dict) -> None:
    """Keep ``weights`` (trainable parameters by name) as the best validation's."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    save_tensors(weights, ckpt_root / BEST)


def best_weights(ckpt_root: Path) -> dict | None:
    """The best validation's trainable weights, None when no validation kept any."""
    path = ckpt_root / BEST
    return load_tensors(path) if path.is_file() else None
