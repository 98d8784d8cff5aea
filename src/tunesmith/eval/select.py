"""Checkpoint selection on the task metric: a small validation sample answered at every validation."""
from __future__ import annotations

from dataclasses import dataclass

from ..data.split import sample_in_order
from ..errors import TunesmithError
from ..generation import generate
from ..objectives.base import hook
from ..session import Session
from . import metrics
from .decide import headline


@dataclass
class TaskScore:
    """``score(model)`` answers the validation sample greedily and returns each answer's score on the task's
    headline metric (higher is better); the training loop keeps the checkpoint that scores clearly best."""
    metric: str
    prompts: list
    references: list
    labels: list | None
    tokenizer: object
    max_new_tokens: int
    batch_size: int

    @property
    def n(self) -> int:
        return len(self.prompts)

    def describe(self) -> str:
        return f"{self.metric} on {self.n} validation examples"

    def __call__(self, model) -> list[float]:
        preds = generate(model, self.tokenizer, self.prompts, self.max_new_tokens, batch_size=self.batch_size)
        return metrics.per_example_scores(self.metric, preds, self.references, self.labels)


MIN_EXAMPLES = 8     # fewer validation answers than this say too little to choose a checkpoint by


def _answerable(session: Session) -> list:
    """Validation examples with a prompt to answer and a reference to score the answer against."""
    return [ex for ex in session.splits.get("validation", []) if ex.messages and ex.reference is not None]


def why_not(session: Session) -> str | None:
    """Why the run's checkpoints cannot be chosen on the task metric, or None when they can."""
    r = session.run.recipe
    obj = session.objective
    if session.manifest.get("tasks"):
        return "multi-task runs are selected on validation loss"
    if not r.metrics():
        return f"task {r.task} has no generation metric"
    if not (obj.generates_text and obj.compares_baselines) or hook(obj, "evaluate"):
        return f"objective {r.objective.name} is judged on its own metrics"
    usable = _answerable(session)
    if len(usable) < MIN_EXAMPLES:
        return f"{len(usable)} validation examples with a reference (at least {MIN_EXAMPLES} needed)"
    if "accuracy" in r.metrics() and not session.labels:
        return "accuracy needs the task's label set"
    return None


def task_score(session: Session) -> TaskScore | None:
    """The scorer ``train.select_on`` asks for: None selects on validation loss (``val_loss``, or ``auto``
    where the task has no metric to score). ``task_metric`` where it cannot apply is an error."""
    r = session.run.recipe
    mode = r.train.select_on
    if mode == "val_loss":
        return None
    reason = why_not(session)
    if reason:
        if mode == "task_metric":
            raise TunesmithError(f"train.select_on task_metric cannot apply: {reason}; use auto or val_loss",
                                 field="train.select_on")
        return None
    sample = sample_in_order(_answerable(session), r.train.select_examples, r.train.seed)   # not the head of a
    # validation split that keeps a label-sorted file's order
    probe = metrics.compute(r.metrics(), [sample[0].reference], [sample[0].reference], session.labels)
    return TaskScore(metric=headline(r, {"metrics": probe}), prompts=[ex.prompt_messages for ex in sample],
                     references=[ex.reference for ex in sample], labels=session.labels,
                     tokenizer=session.tokenizer, max_new_tokens=r.eval.max_new_tokens,
                     batch_size=r.eval.batch_size)


__all__ = ["TaskScore", "task_score", "why_not", "MIN_EXAMPLES"]
