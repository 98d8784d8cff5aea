"""A training time budget: parse "1h30m"-style durations, plan the step count that fits, and a
learning-rate schedule whose length can be set after the first steps were timed.

Torch-free at import (the recipe's `train.time_budget` is validated by ``durations.parse_duration``).
The plan lives in :class:`PlannedSchedule`, a callable object used as ``LambdaLR``'s lambda: torch saves
a callable object's attributes in the scheduler's ``state_dict``, so a checkpoint carries the plan and
a resumed run continues it instead of planning again.
"""
from __future__ import annotations

import math

from ..durations import parse_duration

WARMUP_STEPS = 1         # untimed first step (allocation, kernel selection)
TIMED_STEPS = 3          # steps whose mean time sets the plan
REFINE_STEPS = 12        # steps timed before the plan is corrected once (with validation and save times)
EARLY_SHARE = 0.1        # slow steps: plan as soon as the steps so far took this share of the budget
EARLY_REFINE_SHARE = 0.3  # ... and correct the plan once they took this share
OVERRUN_STOP = 1.20      # stop outright when the budget is overrun by this factor (the plan was wrong)
VALIDATION_SHARE = 0.2   # validations (with the task metric) spaced to take at most this share of the budget


def plan_steps(*, budget_s: float, elapsed_s: float, done: int, natural: int, step_s: float,
               eval_every: int, val_s: float, save_every: int, save_s: float) -> int:
    """The most optimizer steps (between ``done`` and ``natural``) whose remaining cost fits the budget.

    Remaining cost of ending at step N: (N - done) steps, plus a validation (``val_s``, 0 without
    validation data) and a checkpoint save (``save_s``) at every multiple of ``eval_every`` /
    ``save_every`` after ``done`` and at N itself. The cost never decreases with N: bisection."""
    remaining = budget_s - elapsed_s

    def events(n: int, every: int) -> int:
        return n // every - done // every + (0 if n % every == 0 else 1)

    def cost(n: int) -> float:
        return (n - done) * step_s + val_s * events(n, eval_every) + save_s * events(n, save_every)

    if natural <= done:
        return natural
    lo, hi = done, natural           # cost(lo) treated as 0 (nothing more to do)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= remaining:
            lo = mid
        else:
            hi = mid - 1
    return lo


def validation_every(total: int, eval_every: int, wanted: int, val_s: float, budget_s: float) -> int:
    """Steps between validations under a budget: ``eval_every``, shortened so that about ``wanted`` validations
    fall in ``total`` steps (the kept checkpoint is chosen among them), fewer when ``wanted`` of them
    (``val_s`` each) would take over :data:`VALIDATION_SHARE` of the budget; one means only the final one."""
    fit = int(VALIDATION_SHARE * budget_s / val_s) if val_s > 0 else wanted
    n = max(1, min(wanted, fit))
    return max(1, min(eval_every, math.ceil(total / n)))


class PlannedSchedule:
    """Warmup + cosine / linear / constant LR multiplier over ``total`` steps (the formulas of
    transformers' ``get_*_schedule_with_warmup``), with ``total`` settable once the run is timed.

    Plain attributes only: they go into the scheduler's state_dict and come back on resume."""

    def __init__(self, kind: str, natural: int, warmup_ratio: float, budget_s: float):
        self.kind = kind
        self.warmup_ratio = warmup_ratio
        self.budget_s = budget_s
        self.natural_steps = natural
        self.total = natural
        self.warmup = int(warmup_ratio * natural)
        self.planned = False          # the step count was set from measured step times
        self.refined = False          # ... and corrected with a measured validation
        self.measured_step_s = None
        self.val_s = None
        self.save_s = None
        self.elapsed_s = 0.0          # training wall time so far (steps, validations, checkpoints)
        self.stopped_over_budget = False
        self.eval_every = None        # validation spacing chosen with the plan (None: the recipe's eval_every)
        self.planned_at = None        # the step after which the plan was made

    def set_total(self, total: int) -> None:
        self.total = max(int(total), 1)
        self.warmup = int(self.warmup_ratio * self.total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return float(step) / float(max(1, self.warmup))
        if self.kind == "constant":
            return 1.0
        progress = float(step - self.warmup) / float(max(1, self.total - self.warmup))
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    def report(self) -> dict:
        return {"budget_s": self.budget_s, "natural_steps": self.natural_steps, "planned_steps": self.total,
                "measured_step_s": self.measured_step_s, "validation_s": self.val_s, "checkpoint_s": self.save_s,
                "actual_s": round(self.elapsed_s, 3), "stopped_over_budget": self.stopped_over_budget,
                "eval_every": getattr(self, "eval_every", None), "planned_at_step": getattr(self, "planned_at", None)}


__all__ = ["parse_duration", "plan_steps", "validation_every", "PlannedSchedule", "WARMUP_STEPS", "TIMED_STEPS",
           "REFINE_STEPS", "EARLY_SHARE", "EARLY_REFINE_SHARE", "OVERRUN_STOP", "VALIDATION_SHARE"]
