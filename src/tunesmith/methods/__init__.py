"""Registry of fine-tuning methods: name -> plug-in implementing the `Method` contract."""
from __future__ import annotations

from .adapter import Adapter
from .base import Method
from .bitfit import BitFit
from .freeze import Freeze
from .full import Full
from .ia3 import IA3
from .lora import DoRA, LoRA, RsLoRA
from .prompt import PrefixTuning, PromptTuning
from .sparse import Sparse

METHODS: dict[str, type] = {m.name: m for m in (LoRA, DoRA, RsLoRA, IA3, PromptTuning, PrefixTuning, Adapter,
                                                 Freeze, BitFit, Sparse, Full)}


def get(name: str) -> Method:
    if name not in METHODS:
        from ..errors import TunesmithError
        raise TunesmithError(f"method '{name}' is not available yet; available: {', '.join(METHODS)}",
                             field="method.name")
    return METHODS[name]()
