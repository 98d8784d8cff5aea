"""Training objectives: loss functions (plus their data building and batching) the one loop is given."""
from __future__ import annotations

from .classification import ClassificationObjective
from .distill import DistillObjective
from .preference import DPOObjective, ORPOObjective
from .sft import LossOutput, SFTObjective

OBJECTIVES = {"sft": SFTObjective, "classification": ClassificationObjective,
              "dpo": DPOObjective, "orpo": ORPOObjective, "distill": DistillObjective}


def get(name: str, **kwargs):
    return OBJECTIVES[name](**kwargs)


def from_recipe(recipe):
    """The objective a recipe asks for, configured from its `objective` section."""
    o = recipe.objective
    if o.name == "sft":
        return SFTObjective(label_smoothing=o.label_smoothing, neftune_alpha=o.neftune_alpha)
    if o.name not in OBJECTIVES:
        from ..errors import TunesmithError
        raise TunesmithError(f"objective '{o.name}' is not available yet; available: {', '.join(OBJECTIVES)}",
                             field="objective.name")
    return OBJECTIVES[o.name].from_recipe(recipe)


__all__ = ["LossOutput", "SFTObjective", "DPOObjective", "ORPOObjective", "ClassificationObjective", "DistillObjective", "OBJECTIVES", "get", "from_recipe"]
