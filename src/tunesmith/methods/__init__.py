"""Registry of fine-tuning methods: name -> plug-in implementing the `Method` contract."""
from __future__ import annotations

from .base import Method
from .freeze import Freeze
from .full import Full
from .lora import LoRA

METHODS: dict[str, type] = {"lora": LoRA, "full": Full, "freeze": Freeze}


def get(name: str) -> Method:
    return METHODS[name]()
