"""The objective contract: data building, batching, loss, and optional model/eval hooks."""
from __future__ import annotations

from typing import Protocol


class Objective(Protocol):
    """What the one training loop and the pipeline need from an objective.

    Required:
      * ``build(splits, tokenizer, recipe) -> (items_by_split, stats_by_split)``: turn the
        preprocessed ``Example`` splits into training items. Items have a ``length`` (tokens).
      * ``collate(items, pad_id) -> batch``: tensors plus ``n_tokens`` (real tokens) and
        ``n_loss`` (loss units: the loop divides the summed loss of a step by their total).
      * ``__call__(model, batch) -> LossOutput``: the summed loss over the batch's loss units.

    Optional hooks (the pipeline calls them when present):
      * ``attach(model, tokenizer, recipe) -> model``: change the architecture before the method
        is applied (e.g. add a classification head, build a distillation student).
      * ``before_training(model, items_by_split)``: one pass with the untouched model (e.g. DPO
        reference log-probabilities).
      * ``after_method(model) -> model``: runs after the method is applied and before the optimizer
        is built (e.g. keep a new head trainable whatever the method froze).
      * ``save_extra(model, out_dir)`` / ``load_extra(model, in_dir) -> model``: weights the
        objective owns (e.g. a new head), saved next to the method's adapter/weights;
        ``load_meta(in_dir)``: what a fresh objective must know before ``attach`` on reload (labels).
      * ``evaluate(model, tokenizer, examples, items, recipe) -> dict``: task evaluation replacing
        generation-based metrics; returns ``{"metrics": {...}, "predictions": [...], ...}``.
      * ``check_data(splits) -> object``: refuses prepared data the objective cannot train on (one clear
        error), called before the run folder is made.
      * ``training_notes() -> dict[str, str]``: what the objective did to the model before training (e.g. how
        a new head was initialised), recorded in ``train.json`` and the report's Training table.
      * ``fitted_start`` (bool attribute, default False): the model is already fitted to the task before the first
        step (e.g. a head from a linear probe); the loop then validates it at step 0 and keeps it unless a
        training step beats it.
      * ``mergeable`` (bool attribute, default True): whether a merged plain transformers model
        is a faithful export (False when the objective adds modules transformers cannot load).
    """

    name: str
    generates_text: bool       # the tuned model answers in text (else a head predicts labels)
    compares_baselines: bool   # judged against zero-shot / few-shot / RAG on the task metric
    trains_on_text: bool       # plain general text can be mixed into its training (replay)
    own_model: bool            # the tuned model is a new model, not the recipe's base plus the method

    def build(self, splits: dict, tokenizer, recipe) -> tuple[dict, dict]: ...
    def collate(self, items: list, pad_id: int) -> dict: ...
    def __call__(self, model, batch: dict): ...


def hook(objective, name: str):
    """The objective's optional hook ``name``, or None."""
    fn = getattr(objective, name, None)
    return fn if callable(fn) else None


__all__ = ["Objective", "hook"]
