"""The one way to make a model trainable for a recipe and the one way to load a tuned run's model."""
from __future__ import annotations

from pathlib import Path

from . import methods, models, objectives
from .errors import TunesmithError
from .objectives.base import hook
from .rundir import Run, as_run, resolve_device
from .train.loop import seed_everything


def calibration(objective, items: list, pad_id: int):
    """``f(model) -> loss`` of ``objective`` on one batch of ``items`` (for methods that choose what to
    train from data, e.g. gradient-selected sparse masks)."""
    def loss(model):
        batch = objective.collate(items, pad_id)
        device = next(model.parameters()).device
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        out = objective(model, batch)
        return out.loss_sum / max(out.count, 1)
    return loss


def prepare_for_training(model, method, objective, recipe, tokenizer, *, calibration=None, seqs: dict | None = None):
    """The model exactly as training sees it: the objective's architecture change (``attach``), its
    pass over the untouched model (``before_training``, given ``seqs``), the method applied on a fixed
    seed, then ``after_method`` (e.g. a new label head kept trainable whatever the method froze)."""
    if hook(objective, "attach"):
        model = objective.attach(model, tokenizer, recipe)
    if seqs is not None and hook(objective, "before_training"):
        objective.before_training(model, seqs)
    seed_everything(recipe.train.seed)
    model = method.apply(model, recipe.method, calibration=calibration)
    if hook(objective, "after_method"):
        model = objective.after_method(model)
    return model


def rebuilt(recipe, method, objective, tokenizer, weights: dict, device, *, calibration=None):
    """The model as trained, whole, on a freshly loaded base: :func:`prepare_for_training` (without the
    objective's pass over the data: its result is among ``weights``) with the trained weights loaded. For
    saving a model whose training copy was split across processes."""
    from .methods.base import load_trainable_state
    base, _ = models.load(recipe.model.name, device=device, trust_remote_code=recipe.model.trust_remote_code)
    model = prepare_for_training(base, method, objective, recipe, tokenizer, calibration=calibration)
    load_trainable_state(model, weights)
    return model


def run_objective(run: "str | Path | Run"):
    """A trained run's objective as its saved model needs it (what it must know before loading, e.g. a head's
    label set, read from the saved model)."""
    run = as_run(run)
    objective = objectives.from_recipe(run.recipe)
    if hook(objective, "load_meta"):
        objective.load_meta(run.model_dir)
    return objective


def load_tuned(run: "str | Path | Run", device: str | None = None, *, prefer_merged: bool = False,
               tokenizer=None, objective=None):
    """``(model, tokenizer)`` of a trained run: the method's adapter/weights (and the objective's own
    weights, e.g. a label head) on a freshly loaded base, as evaluated. With ``prefer_merged`` the
    run's merged export is loaded instead when it exists (plain transformers). ``objective`` is the run's
    objective when the caller has built it already; else a fresh one reads what it needs (e.g. the label
    set of a head) from the saved model."""
    run = as_run(run)
    r = run.recipe
    device = device or resolve_device(r.train.device)
    if prefer_merged and run.has_merged():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        models.quiet_transformers()
        tok = tokenizer or AutoTokenizer.from_pretrained(run.merged_dir)
        model = AutoModelForCausalLM.from_pretrained(run.merged_dir, dtype=torch.float32).to(device)
        model.eval()
        return model, tok
    if not run.model_dir.is_dir():
        raise TunesmithError("run has no trained model; run `tunesmith train` first", file=str(run.path))
    method = methods.get(r.method.name)
    objective = objective if objective is not None else run_objective(run)
    model, base_tok = models.load(r.model.name, device=device, trust_remote_code=r.model.trust_remote_code)
    tok = tokenizer or base_tok
    if hook(objective, "attach"):
        model = objective.attach(model, tok, r)
    model = method.load(model, run.model_dir, r.method)
    if hook(objective, "load_extra"):
        model = objective.load_extra(model, run.model_dir)
    model.eval()
    return model, tok


__all__ = ["calibration", "prepare_for_training", "load_tuned", "run_objective"]
