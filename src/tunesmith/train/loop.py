"""The one training loop (on accelerate): any objective, accumulation, clipping, eval, early stop, resume."""
from __future__ import annotations

import json
import math
import os
import random
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data.tokenize import batches
from . import budget as tb
from . import checkpoint
from . import distributed as ddp
from . import fsdp
from . import frozen
from .dropout import lean_dropout
from . import precision as prec
from .anchor import anchor_for_run
from .checkpoint import LoopState
from ..rundir import Layout, truncate_metrics
from .progress import TrainProgress, console


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
    total_steps: int = 0                 # the steps the run planned (after a time budget's planning)
    precision: dict | None = None        # {"used", "requested", "reason"}
    time_budget: dict | None = None      # planned vs actual, when train.time_budget is set
    anchor: dict | None = None           # the weight anchor's record (continue.strategy regularize), else None
    distributed: dict | None = None      # {"nproc", "backend", "rank_weight_spread"} when trained on N processes
    selected_on: str = "val_loss"        # what chose the kept checkpoint: validation loss, or the task metric's sample
    best_score: float | None = None      # the task metric of the kept checkpoint on that sample


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
          on_eval: Callable | None = None, stop_after: int | None = None, task_score=None,
          spent_s: float = 0.0) -> TrainResult:
    """Train ``model`` in place with ``objective(model, batch) -> LossOutput``.

    The objective's ``collate(items, pad_id)`` (default: SFT token batches) builds batches; each
    carries ``n_loss`` so the loss is normalised exactly over a whole accumulated step.
    Writes ``metrics.jsonl`` and ``checkpoints/`` under ``run_dir``. With ``resume`` the newest
    intact checkpoint is restored (damaged newer ones are skipped, saying so; none: from the start), the
    metrics are cut back to its step, and the run continues where it stopped, on the same batches.
    ``stop_after`` ends the call after that many optimizer steps (used to test interruption).
    ``on_eval(step, metrics)`` is called after each validation; an exception it raises (e.g. a
    sweep pruning the trial) ends training and propagates.
    ``task_score`` (optional; ``score(model) -> per-example scores``, higher is better, with ``metric`` and
    ``describe()``) is measured at every validation and chooses the kept checkpoint (see :func:`_improves`);
    without it the lowest validation loss does. Early stopping counts validations that do not improve it.
    ``spent_s``: seconds of ``cfg.time_budget`` already spent preparing the model (e.g. fitting a new head's
    starting probe); the plan counts them, and ``actual_s`` includes them.
    """
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import get_scheduler

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = make_accelerator(cfg.device)
    ranks = ddp.current()         # under the train.nproc launcher: this rank of the group (accelerate set it up)
    precision = prec.choose(cfg.precision, accelerator.device)    # before seeding: a probe draws no numbers
    seed_everything(cfg.seed)
    scaler = precision.grad_scaler()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    collate = _collate_of(objective)
    plan = plan_micro_batches(len(train_seqs), cfg, train_seqs)
    total_steps = math.ceil(len(plan) / cfg.grad_accum)
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    shards = _strategy(cfg, ranks, accelerator.device, model, run_dir)
    if ranks.distributed:       # no DDP wrapper: the strategy sums (ddp) or reduce-scatters (fsdp) gradients
        model = shards.wrap(model)     # before the optimizer: under fsdp it optimizes each rank's parts
    step_objective = shards.through(objective)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    planned = None          # the time budget's plan: a schedule whose length is set after timing steps
    if cfg.time_budget is not None:
        planned = tb.PlannedSchedule(cfg.scheduler, total_steps, cfg.warmup_ratio, tb.parse_duration(cfg.time_budget))
        planned.elapsed_s = spent_s        # a resumed run restores its own from the checkpoint
        scheduler = LambdaLR(optimizer, planned)
    else:
        sched_name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.scheduler]
        scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                                  num_training_steps=total_steps)
    if not ranks.distributed:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    device = accelerator.device
    layout = Layout(run_dir)
    ckpt_root, metrics_path = layout.checkpoints, layout.metrics_path
    bare = accelerator.unwrap_model(model)
    anchor = anchor_for_run(run_dir, bare)      # the starting weights, before a resume restores a checkpoint

    state = LoopState()
    if resume:
        if ranks.main:
            checkpoint.clean_partial(ckpt_root)
        ddp.barrier(ranks)
        say = (lambda m: console.print(m, style="yellow", markup=False, highlight=False, soft_wrap=True)) \
            if ranks.main else (lambda m: None)
        if (last := checkpoint.latest_intact(ckpt_root, log=say)) is not None:
            state, weights, optimizer_state = checkpoint.restore(last, scheduler)
            shards.load_trainable(accelerator.unwrap_model(model), weights)
            shards.load_optimizer(model, optimizer, optimizer_state)
        # rows logged after the restored step (or all of them: no checkpoint) are replayed; torn lines dropped
        if ranks.main:       # no checkpoint: a start validation (step 0) runs again, its old row goes too
            truncate_metrics(metrics_path, state.step if state.step else -1)
    if planned is not None:          # restored with the scheduler: a resumed run keeps its plan
        total_steps = planned.total
    if anchor is not None:
        anchor.start = anchor.measure(bare)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    metrics_file = _open_for_append(metrics_path) if ranks.main else None
    last_loss = None
    steps_this_call = 0
    step_times: list[float] = []     # this call's step durations, for the time budget's plan
    hold = precision.dtype if cfg.frozen_precision == "auto" and shards.name != "fsdp" else torch.float32
    with frozen.held_in(model, hold) as held, lean_dropout(model), metrics_file or nullcontext():
        with TrainProgress(total_steps, start=state.step, enabled=ranks.main,
                           description=f"train {precision.used}") as bar:
            bar.note(f"precision {precision.used}: {precision.reason}")
            if held.note:
                bar.note(f"frozen base {held.note}")
            if held.tensors:
                bar.note(f"frozen base held in {held.dtype} while training: {held.tensors} linear tensors, "
                         f"{held.elements / 1e6:.1f}M values (exact fp32 weights restored afterwards)")
            if ranks.distributed:
                bar.note(f"data parallel ({shards.name}): {ranks.world} processes, each micro-batch split between "
                         f"them" + (", every weight sharded" if shards.name == "fsdp" else ""))
            if planned is not None and spent_s >= 1 and not resume:
                bar.note(f"time budget: {spent_s:.0f}s of it went to preparing the model before training")
            call_t0, elapsed0 = time.perf_counter(), planned.elapsed_s if planned is not None else 0.0

            def validate() -> tuple[dict, list[float] | None]:
                """Validation loss (and the task metric) now; under a time budget, timed into the plan."""
                tv = time.perf_counter()
                with precision.autocast() if held.tensors else nullcontext():   # held weights need it
                    ev = evaluate_loss(model, val_seqs, step_objective, batch_size=cfg.batch_size,
                                       pad_id=pad_id, device=device)
                    if ranks.distributed:     # one value for every rank's decisions (collectives follow)
                        ev["val_loss"] = ddp.sum_across([ev["val_loss"]], ranks, device)[0] / ranks.world
                    scores = task_score(model) if task_score is not None else None
                    if scores:
                        ev.update(task_metric=statistics.fmean(scores), task_metric_name=task_score.metric)
                if planned is not None:
                    planned.val_s = time.perf_counter() - tv
                    planned.elapsed_s = elapsed0 + time.perf_counter() - call_t0
                _write(metrics_file, {"type": "eval", "step": state.step, **ev})
                scored = f"  {task_score.metric} {ev['task_metric']:.4g}" if task_score else ""
                bar.note(f"step {state.step}: val_loss {ev['val_loss']:.4f}  ppl {ev['perplexity']:.2f}{scored}")
                return ev, scores

            def keep_if_best(ev: dict, scores: list[float] | None) -> bool:
                if not _improves(state, ev["val_loss"], scores):
                    return False
                state.best_val, state.best_step, state.bad_evals = ev["val_loss"], state.step, 0
                state.best_scores = scores
                best = shards.trainable_state(accelerator.unwrap_model(model))    # fsdp: every rank
                if ranks.main:
                    checkpoint.save_best(ckpt_root, best)
                return True

            if val_seqs and state.step == 0 and getattr(objective, "fitted_start", False):
                # the start is already fitted to the task (e.g. a head from a linear probe): a candidate too, so
                # training can only replace it with something better on validation
                ev0, scores0 = validate()
                keep_if_best(ev0, scores0)
                state.top_scores = scores0 or state.top_scores    # the best-scoring validation so far
            while state.step < total_steps and not state.early_stopped:
                t0 = time.perf_counter()
                chunk = plan[state.step * cfg.grad_accum:(state.step + 1) * cfg.grad_accum]
                parts = [(part, 1.0) if part else (idx[:1], 0.0)    # (items, weight): a weightless copy
                         for idx in chunk for part in [ddp.shard(idx, ranks)] if part or shards.every_rank_steps]
                mbs = [(collate([train_seqs[i] for i in part], pad_id), w) for part, w in parts]
                n_trained, tokens = (int(v) for v in ddp.sum_across(
                    [sum(b["n_loss"] * w for b, w in mbs), sum(b["n_tokens"] * w for b, w in mbs)], ranks, device))
                step_loss = 0.0
                for j, (b, weight) in enumerate(mbs):
                    b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
                    sync = j == len(mbs) - 1
                    shards.sync(model, sync)
                    with (nullcontext() if sync else accelerator.no_sync(model)):
                        with precision.autocast():       # forward and loss; backward outside autocast
                            out = step_objective(model, b)
                            loss = out.loss_sum * weight / max(n_trained, 1)
                        loss = loss.float()
                        step_loss += float(loss.detach())
                        if anchor is not None and j == 0 and ranks.main:   # once per step, outside autocast
                            penalty = anchor.penalty(bare)
                            loss = loss + penalty
                        loss = loss * shards.backward_scale        # 1.0 but under fsdp (see fsdp.Sharded)
                        accelerator.backward(scaler.scale(loss) if scaler else loss)
                if anchor is not None and not (mbs and ranks.main):      # its value for the record
                    with torch.no_grad():
                        penalty = anchor.penalty(bare)
                shards.reduce_gradients(trainable)
                if ranks.distributed:
                    step_loss = ddp.sum_across([step_loss], ranks, device)[0]
                grad_norm = None
                if scaler:
                    scaler.unscale_(optimizer)
                if cfg.max_grad_norm:
                    grad_norm = _float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                dt = time.perf_counter() - t0
                state.step += 1
                state.tokens += tokens
                state.trained_tokens += n_trained
                state.wall_s += dt
                last_loss = step_loss
                record = {"type": "train", "step": state.step, "loss": step_loss,
                          "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "tokens": tokens,
                          "tokens_per_s": tokens / dt, "epoch": state.step * cfg.grad_accum * cfg.batch_size
                          / max(len(train_seqs), 1)}
                if anchor is not None:
                    record["penalty"] = float(penalty.detach())
                _write(metrics_file, record)
                bar.update(state.step, loss=step_loss, tps=state.tokens / max(state.wall_s, 1e-9))
                if on_step:
                    on_step(record)
                if planned is not None:
                    step_times.append(time.perf_counter() - t0)    # the step and its bookkeeping
                    planned.elapsed_s = elapsed0 + time.perf_counter() - call_t0
                    total_steps = _budget_replan(planned, state, step_times, cfg, val_seqs, bar)
                is_last = state.step == total_steps
                every = (getattr(planned, "eval_every", None) if planned is not None else None) or cfg.eval_every
                if val_seqs and (state.step % every == 0 or is_last):
                    ev, scores = validate()
                    if planned is not None:
                        total_steps = _budget_refine(planned, state, step_times, cfg, val_seqs, bar)
                        is_last = state.step == total_steps
                    if on_eval:
                        on_eval(state.step, ev)
                    if not keep_if_best(ev, scores):
                        state.bad_evals += 1
                        if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
                            state.early_stopped = True
                            bar.note(f"early stop: no improvement in {state.bad_evals} validations; "
                                     f"best step {state.best_step}")
                    if scores and (not state.top_scores or sum(scores) > sum(state.top_scores)):
                        state.top_scores = scores          # the best-scoring validation so far
                save_now = state.step % cfg.save_every == 0 or is_last or state.early_stopped
                if planned is not None and planned.planned and planned.save_s is None:
                    save_now = True       # time a checkpoint save early: saves are part of the plan
                if save_now:
                    ts = time.perf_counter()
                    if planned is not None:    # the checkpoint carries the plan (in the scheduler's state)
                        planned.elapsed_s = elapsed0 + ts - call_t0 + (planned.save_s or 0.0)
                    weights = shards.trainable_state(accelerator.unwrap_model(model))     # fsdp: every rank
                    optimizer_state = shards.optimizer_state(model, optimizer)
                    if ranks.main:
                        checkpoint.save(ckpt_root, weights, optimizer_state, scheduler, state)
                    ddp.barrier(ranks)
                    if planned is not None:
                        planned.save_s = time.perf_counter() - ts
                        planned.elapsed_s = elapsed0 + time.perf_counter() - call_t0
                        total_steps = _budget_refine(planned, state, step_times, cfg, val_seqs, bar)
                steps_this_call += 1
                if stop_after is not None and steps_this_call >= stop_after:
                    break
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    finished = state.step >= total_steps or state.early_stopped
    spread = shards.spread(trainable)
    rss = ddp.peak_rss_mb(ranks, device) if ranks.distributed else None
    if finished and val_seqs:
        ddp.barrier(ranks)                 # rank 0's best weights are on disk
        if (best := checkpoint.best_weights(ckpt_root)) is not None:
            shards.load_trainable(accelerator.unwrap_model(model), best)
    if anchor is not None:
        anchor.end = anchor.measure(bare)
    return TrainResult(steps=state.step, tokens=state.tokens, trained_tokens=state.trained_tokens,
                       wall_s=state.wall_s, tokens_per_s=state.tokens / max(state.wall_s, 1e-9),
                       best_step=state.best_step, best_val_loss=state.best_val,
                       early_stopped=state.early_stopped, final_train_loss=last_loss, total_steps=total_steps,
                       precision={**precision.as_dict(), **held.as_dict()},
                       time_budget=planned.report() if planned is not None else None,
                       anchor=anchor.record() if anchor is not None else None,
                       distributed={"nproc": ranks.world, "backend": ddp.backend(device), "strategy": shards.name,
                                    "rank_weight_spread": spread, "rank_peak_rss_mb": rss} if ranks.distributed else None,
                       selected_on=task_score.describe() if task_score is not None else "val_loss",
                       best_score=statistics.fmean(state.best_scores) if state.best_scores else None)


def _strategy(cfg, ranks: ddp.Ranks, device, model, run_dir: Path):
    """How the ranks share the work: whole copies (``ddp``, also one process) or sharded weights (``fsdp``,
    whose settings are written to the run folder by rank 0)."""
    if cfg.strategy != "fsdp" or not ranks.distributed:
        return ddp.Replicated(ranks, device)
    config = fsdp.accelerate_config(cfg, model)
    if ranks.main:
        fsdp.write_config(run_dir, config)
    return fsdp.Sharded(ranks, device, config)


def _float(value) -> float:
    """A norm as a float (a sharded one is gathered first)."""
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def _improves(state: LoopState, val_loss: float, scores: list[float] | None) -> bool:
    """Whether a validation beats the kept checkpoint. With per-example task scores: clearly higher than the
    kept checkpoint's (the mean paired difference over the same answers above one standard error) wins;
    clearly lower than the kept one's, or than the best-scoring validation's so far, loses (so small drops
    cannot add up); otherwise, as without scores, a validation loss lower by more than 1e-4 wins."""
    if state.best_val is None:
        return True
    if scores:
        versus_kept = _clear_difference(scores, state.best_scores)
        if versus_kept:
            return versus_kept > 0
        if _clear_difference(scores, state.top_scores) < 0:
            return False
    return val_loss < state.best_val - 1e-4


def _clear_difference(scores: list[float], other: list[float] | None) -> int:
    """+1 / -1 when ``scores`` are clearly above / below ``other`` on the same items (mean paired difference
    beyond one standard error), 0 when within the noise or not comparable."""
    if not other or len(other) != len(scores):
        return 0
    diffs = [a - b for a, b in zip(scores, other)]
    mean = sum(diffs) / len(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return 0 if abs(mean) <= se + 1e-9 else (1 if mean > 0 else -1)


def _budget_refine(planned: "tb.PlannedSchedule", state: LoopState, step_times: list[float], cfg, val_seqs,
                   bar) -> int:
    """Correct the plan once, as soon as a checkpoint save, (with validation data) a validation and
    :data:`budget.REFINE_STEPS` steps (or, when steps are slow, :data:`budget.EARLY_REFINE_SHARE` of the budget's
    worth of them) were timed; a run resumed after that keeps the plan its checkpoint recorded."""
    if planned.planned and not planned.refined and planned.save_s is not None \
            and (planned.val_s is not None or not val_seqs) \
            and (len(step_times) - tb.WARMUP_STEPS >= tb.REFINE_STEPS
                 or sum(step_times) >= tb.EARLY_REFINE_SHARE * planned.budget_s):
        planned.refined = True
        return _budget_replan(planned, state, step_times, cfg, val_seqs, bar, force=True)
    return planned.total


def _budget_replan(planned: "tb.PlannedSchedule", state: LoopState, step_times: list[float], cfg, val_seqs,
                   bar, force: bool = False) -> int:
    """The run's step count under the time budget after this step: planned once the first steps are
    timed (the first of this call untimed; when steps are slow, as soon as they took :data:`budget.EARLY_SHARE`
    of the budget, from what was timed, the untimed step alone if need be: waiting for more would spend the
    budget on measuring it), corrected once (``force``, see :func:`_budget_refine`), and cut short
    when the run overruns the budget by :data:`budget.OVERRUN_STOP`. Returns the (new) total."""
    timed = step_times[tb.WARMUP_STEPS:]
    slow = bool(step_times) and sum(step_times) >= tb.EARLY_SHARE * planned.budget_s
    if (not planned.planned and (len(timed) >= tb.TIMED_STEPS or slow)) or (force and planned.planned):
        measured = timed or step_times
        step_s = sum(measured) / len(measured) if measured else planned.measured_step_s
        planned.measured_step_s = step_s
        val_s = planned.val_s
        if val_s is None and val_seqs:    # forward only, about a third of a training micro-step per batch
            val_s = math.ceil(len(val_seqs) / cfg.batch_size) * step_s / cfg.grad_accum / 3
        every = cfg.eval_every
        for _ in range(2):          # the step count depends on the validations' spacing and back: settle it
            new = tb.plan_steps(budget_s=planned.budget_s, elapsed_s=planned.elapsed_s, done=state.step,
                                natural=planned.natural_steps, step_s=step_s, eval_every=every,
                                val_s=val_s or 0.0, save_every=cfg.save_every, save_s=planned.save_s or 0.0)
            if val_seqs:
                every = tb.validation_every(new, cfg.eval_every, cfg.validations, val_s or 0.0, planned.budget_s)
        if new != planned.total or every != getattr(planned, "eval_every", None):
            bar.note(f"time budget {planned.budget_s:g}s: {new} steps of {step_s:.3g}s planned "
                     f"(the data and epochs allow {planned.natural_steps}), validation every {every} steps")
        planned.eval_every = every
        if not planned.planned:
            planned.planned_at = state.step
        planned.planned = True
        planned.set_total(new)
        bar.progress.update(bar.task, total=planned.total)
    elif (planned.elapsed_s > planned.budget_s * tb.OVERRUN_STOP and state.step < planned.total):
        planned.stopped_over_budget = True
        bar.note(f"time budget exceeded ({planned.elapsed_s:.1f}s of {planned.budget_s:g}s): "
                 f"stopping at step {state.step} of {planned.total}")
        planned.set_total(state.step)
        bar.progress.update(bar.task, total=planned.total)
    return planned.total


def _open_for_append(path: Path):
    """``path`` opened to append records; a last record cut before its newline is ended first."""
    with open(path, "ab+") as f:
        if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
            f.write(b"\n")
    return open(path, "a", encoding="utf-8")


def _write(f, record: dict) -> None:
    if f is None:        # not rank 0 of a data-parallel group: rank 0 writes the records
        return
    f.write(json.dumps(record) + "\n")
    f.flush()


__all__ = ["train", "evaluate_loss", "TrainResult", "LoopState"]
