"""A weight anchor (L2-SP): a penalty pulling the trainable weights toward a snapshot of their starting values.

`tunesmith continue ... continue.strategy=regularize` continues the parent version's adapter and adds
``weight * sum((w - w_parent)^2)`` over every trainable parameter to each optimizer step's loss, so the new
version learns the new data while staying near what the parent learnt (Li et al., "Explicit inductive bias for
transfer learning with convolutional networks", ICML 2018). The snapshot is taken when the parent's adapter has
just been loaded, before the first step (and before a resumed run restores its checkpoint), so a resumed run is
anchored to the same values.
"""
from __future__ import annotations

from pathlib import Path

import torch


class WeightAnchor:
    """``penalty(model)``: ``weight`` times the squared L2 distance of ``model``'s trainable parameters from the
    values they had when the anchor was made; ``record()`` describes it for ``train.json``."""

    kind = "l2sp"

    def __init__(self, model: torch.nn.Module, weight: float):
        self.weight = float(weight)
        self.names: list[str] = []
        self.values: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.names.append(name)
                self.values[name] = p.detach().clone()
        self.elements = sum(v.numel() for v in self.values.values())
        self.start: float | None = None
        self.end: float | None = None

    def distance_sq(self, model: torch.nn.Module) -> torch.Tensor:
        """Sum over the anchored parameters of ``(w - w_anchor)^2`` (differentiable; float32)."""
        params = dict(model.named_parameters())
        total = None
        for name in self.names:
            p = params[name]
            ref = self.values[name]
            if ref.device != p.device:
                ref = self.values[name] = ref.to(p.device)
            d = (p.float() - ref.float()).pow(2).sum()
            total = d if total is None else total + d
        return total if total is not None else torch.zeros(())

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        """The term added to the loss: ``weight * distance_sq(model)``."""
        return self.weight * self.distance_sq(model)

    def measure(self, model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(self.penalty(model))

    def record(self) -> dict:
        """What ``train.json`` keeps: the kind, the weight, the anchored parameter tensors and elements, and the
        penalty at the start and the end of training (with the L2 distance it stands for)."""
        end_dist = (self.end / self.weight) ** 0.5 if self.end is not None and self.weight > 0 else None
        return {"kind": self.kind, "weight": self.weight, "parameters": len(self.names), "elements": self.elements,
                "penalty_start": self.start, "penalty_end": self.end, "l2_distance_end": end_dist}


def anchor_for_run(run_dir: str | Path, model: torch.nn.Module) -> WeightAnchor | None:
    """The anchor the run's recipe asks for (``continue.strategy: regularize`` with ``continue.regularize_weight``
    above 0, on a continued adapter), made from ``model`` as it is now; ``None`` otherwise (also for a folder
    without a recipe, e.g. a bare training-loop call)."""
    from ..rundir import Layout, Run
    if not Layout(Path(run_dir)).recipe_path.is_file():
        return None
    recipe = Run(Path(run_dir)).recipe
    cfg = recipe.continue_
    if cfg.strategy != "regularize" or not getattr(recipe.method, "init_from", None):
        return None
    weight = cfg.regularize_weight
    return WeightAnchor(model, weight) if weight > 0 else None


__all__ = ["WeightAnchor", "anchor_for_run"]
