"""The one training loop (on accelerate): any objective, accumulation, clipping, eval, early stop, resume."""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data.tokenize import batches
from . import checkpoint
from .checkpoint import LoopState
from .progress import TrainProgress


@dataclass
class TrainResult:
    steps: int
    tokens: int
    trained_tokens: int
    wall_s: float
    tokens_per_s: float
    best_step: int
    best_val_loss: float | None
    early_stopped: bool
    final_train_loss: float | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass


def make_accelerator(device: str):
    from accelerate import Accelerator
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import TunesmithError
        raise TunesmithError("device 'cuda' requested but no CUDA GPU is available", field="train.device")
    return Accelerator(cpu=device == "cpu")


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _collate_of(objective):
    fn = getattr(objective, "collate", None)
    if fn is None:
        from ..data.tokenize import collate as fn
    return fn


@torch.inference_mode()
def evaluate_loss(model, seqs: list, objective, *, batch_size: int, pad_id: int, device=None) -> dict:
    """Loss (averaged over the objective's loss units) and perplexity of ``objective`` over ``seqs``."""
    was_training = model.training
    model.eval()
    total, count, extra = 0.0, 0, {}
    collate = _collate_of(objective)
    for idx in batches(seqs, batch_size, seed=0, shuffle=False):
        batch = collate([seqs[i] for i in idx], pad_id)
        if device is not None:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = objective(model, batch)
        total += float(out.loss_sum)
        count += out.count
        for k, v in (getattr(out, "metrics", None) or {}).items():
            extra[k] = extra.get(k, 0.0) + float(v)
    model.train(was_training)
    loss = total / max(count, 1)
    # objective-specific sums (e.g. reward accuracy) become means over the loss units
    return {"val_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count,
            **{k: v / max(count, 1) for k, v in extra.items()}}


def plan_micro_batches(n_seqs: int, cfg, seqs) -> list[list[int]]:
    """Every micro-batch of the run, in order: deterministic per (seed, epoch), so resume replays it."""
    per_epoch = math.ceil(n_seqs / cfg.batch_size)
    total = max(1, int(round(per_epoch * cfg.epochs)))
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < total:
        plan += batches(seqs, cfg.batch_size, seed=cfg.seed * 1000 + epoch)
        epoch += 1
    plan = plan[:total]
    if cfg.max_steps:
        plan = plan[: cfg.max_steps * cfg.grad_accum]
    return plan


def train(model, train_seqs: list, val_seqs: list, objective: Callable, cfg,
          run_dir: Path, *, pad_id: int, resume: bool = False, on_step: Callable | None = None,
          on_eval: Callable | None = None, stop_after: int | None = None) -> TrainResult:
    """Train ``model`` in place with ``objective(model, batch) -> LossOutput``.

    The objective's ``collate(items, pad_id)`` (default: SFT token batches) builds batches; each
    carries ``n_loss`` so the loss is normalised exactly over a whole accumulated step.
    Writes ``metrics.jsonl`` and ``checkpoints/`` under ``run_dir``. With ``resume`` the newest
    checkpoint is restored and the run continues where it stopped, on the same batches.
    ``stop_after`` ends the call after that many optimizer steps (used to test interruption).
    ``on_eval(step, metrics)`` is called after each validation; an exception it raises (e.g. a
    sweep pruning the trial) ends training and propagates.
    """
    from transformers import get_scheduler

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg.device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    collate = _collate_of(objective)
    plan = plan_micro_batches(len(train_seqs), cfg, train_seqs)
    total_steps = math.ceil(len(plan) / cfg.grad_accum)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    sched_name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.scheduler]
    scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    device = accelerator.device
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"

    state = LoopState()
    if resume and (last := checkpoint.latest(ckpt_root)) is not None:
        state = checkpoint.restore(last, accelerator.unwrap_model(model), optimizer, scheduler)
        _truncate_metrics(metrics_path, state.step)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    metrics_file = open(metrics_path, "a", encoding="utf-8")
    last_loss = None
    steps_this_call = 0
    try:
        with TrainProgress(total_steps, start=state.step, enabled=accelerator.is_main_process) as bar:
            while state.step < total_steps and not state.early_stopped:
                t0 = time.perf_counter()
                chunk = plan[state.step * cfg.grad_accum:(state.step + 1) * cfg.grad_accum]
                mbs = [collate([train_seqs[i] for i in idx], pad_id) for idx in chunk]
                n_trained = sum(b["n_loss"] for b in mbs)
                step_loss = 0.0
                for j, b in enumerate(mbs):
                    b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
                    sync = j == len(mbs) - 1
                    with (nullcontext() if sync else accelerator.no_sync(model)):
                        out = objective(model, b)
                        loss = out.loss_sum / max(n_trained, 1)
                        accelerator.backward(loss)
                    step_loss += float(loss.detach())
                grad_norm = None
                if cfg.max_grad_norm:
                    grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                dt = time.perf_counter() - t0
                tokens = sum(b["n_tokens"] for b in mbs)
                state.step += 1
                state.tokens += tokens
                state.trained_tokens += n_trained
                state.wall_s += dt
                last_loss = step_loss
                record = {"type": "train", "step": state.step, "loss": step_loss,
                          "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "tokens": tokens,
                          "tokens_per_s": tokens / dt, "epoch": state.step * cfg.grad_accum * cfg.batch_size
                          / max(len(train_seqs), 1)}
                _write(metrics_file, record)
                bar.update(state.step, loss=step_loss, tps=state.tokens / max(state.wall_s, 1e-9))
                if on_step:
                    on_step(record)
                is_last = state.step == total_steps
                if val_seqs and (state.step % cfg.eval_every == 0 or is_last):
                    ev = evaluate_loss(model, val_seqs, objective, batch_size=cfg.batch_size,
                                       pad_id=pad_id, device=device)
                    _write(metrics_file, {"type": "eval", "step": state.step, **ev})
                    bar.note(f"step {state.step}: val_loss {ev['val_loss']:.4f}  ppl {ev['perplexity']:.2f}")
                    if on_eval:
                        on_eval(state.step, ev)
                    if state.best_val is None or ev["val_loss"] < state.best_val - 1e-4:
                        state.best_val, state.best_step, state.bad_evals = ev["val_loss"], state.step, 0
                        checkpoint.save_best(ckpt_root, accelerator.unwrap_model(model))
                    else:
                        state.bad_evals += 1
                        if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
                            state.early_stopped = True
                            bar.note(f"early stop: no improvement in {state.bad_evals} validations; "
                                     f"best step {state.best_step}")
                if state.step % cfg.save_every == 0 or is_last or state.early_stopped:
                    checkpoint.save(ckpt_root, accelerator.unwrap_model(model), optimizer, scheduler, state)
                steps_this_call += 1
                if stop_after is not None and steps_this_call >= stop_after:
                    break
    finally:
        metrics_file.close()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    finished = state.step >= total_steps or state.early_stopped
    if finished and val_seqs:
        checkpoint.load_best(ckpt_root, accelerator.unwrap_model(model))
    return TrainResult(steps=state.step, tokens=state.tokens, trained_tokens=state.trained_tokens,
                       wall_s=state.wall_s, tokens_per_s=state.tokens / max(state.wall_s, 1e-9),
                       best_step=state.best_step, best_val_loss=state.best_val,
                       early_stopped=state.early_stopped, final_train_loss=last_loss)


def _write(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records an interrupted run logged after its last checkpoint (they are replayed)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip()
            and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)


__all__ = ["train", "evaluate_loss", "TrainResult", "LoopState"]
