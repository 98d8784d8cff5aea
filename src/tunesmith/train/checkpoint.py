"""Atomic training checkpoints (trainable weights, optimizer, scheduler, RNG, loop state) and resume."""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..fsutil import atomic_write_json
from ..methods.base import load_tensors, load_trainable_state, save_tensors, trainable_state


@dataclass
class LoopState:
    step: int = 0                 # optimizer steps completed
    tokens: int = 0               # real (non-pad) tokens processed
    trained_tokens: int = 0       # tokens with a loss
    wall_s: float = 0.0           # training time so far
    best_val: float | None = None
    best_step: int = 0
    bad_evals: int = 0            # validations since the last improvement
    early_stopped: bool = False


def save(ckpt_root: Path, model, optimizer, scheduler, state: LoopState, keep: int = 2) -> Path:
    """Write ``ckpt_root/step-NNNNNN`` via a temporary folder renamed into place; keep the newest ``keep``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{state.step:06d}"
    tmp = ckpt_root / f".tmp-step-{state.step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_tensors(trainable_state(model), tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()},
               tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", asdict(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(ckpt_root: Path) -> Path | None:
    done = sorted(p for p in ckpt_root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def restore(path: Path, model, optimizer, scheduler) -> LoopState:
    load_trainable_state(model, load_tensors(path / "trainable.safetensors"))
    extra = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    random.setstate(extra["python_rng"])
    return LoopState(**json.loads((path / "state.json").read_text()))


def save_best(ckpt_root: Path, model) -> None:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    save_tensors(trainable_state(model), ckpt_root / "best.safetensors")


def load_best(ckpt_root: Path, model) -> bool:
    path = ckpt_root / "best.safetensors"
    if not path.is_file():
        return False
    load_trainable_state(model, load_tensors(path))
    return True
