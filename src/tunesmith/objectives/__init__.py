"""Training objectives: loss functions the one training loop is given (registry by name)."""
from __future__ import annotations

from .sft import SFTObjective

OBJECTIVES = {"sft": SFTObjective}


def get(name: str, **kwargs):
    return OBJECTIVES[name](**kwargs)
