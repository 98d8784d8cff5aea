"""The method contract: how a fine-tuning method prepares, saves, reloads and merges a model."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

from ..errors import TunesmithError


class Method(Protocol):
    """A fine-tuning method plug-in.

    ``apply`` returns the model to train with exactly the intended parameters trainable;
    ``calibration``, when given, is ``f(model) -> loss`` on one training batch (for methods that
    choose what to train from data, e.g. gradient-selected sparse masks).
    ``save``/``load`` round-trip what the method trained (an adapter or weights) on top of a
    freshly loaded base; ``merge`` returns a plain transformers model equivalent to the tuned one
    (methods with ``mergeable = False`` raise ``TunesmithError`` from ``merge``).
    """

    name: str
    mergeable: bool       # whether merge() folds the tuned weights into a plain model
    has_adapter: bool     # whether save() writes a separate adapter (else full/partial weights)
    peft_adapter: bool    # whether that adapter is a peft adapter folder
    shares_base: bool     # whether a server can load it beside other adapters on one shared base
    virtual_tokens: bool  # whether it adds virtual tokens to the input (not servable by a plain decoder)

    def apply(self, model, cfg, calibration=None) -> torch.nn.Module: ...
    def save(self, model, out_dir: Path) -> None: ...
    def load(self, base_model, in_dir: Path, cfg) -> torch.nn.Module: ...
    def merge(self, model) -> torch.nn.Module: ...


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Parameters that require gradients, by name (what checkpoints store)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise KeyError(f"checkpoint has parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def save_tensors(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Atomically write tensors as safetensors (shared storage is cloned first)."""
    import tempfile
    import os
    state = {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file(state, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def count_trainable(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def block_index(name: str) -> int | None:
    """The transformer-block number in a parameter/module name (``model.layers.3.mlp`` -> 3)."""
    m = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def block_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """Every ``nn.Linear`` inside a transformer block (attention and MLP projections), by name."""
    return [(n, m) for n, m in model.named_modules()
            if type(m) is torch.nn.Linear and block_index(n + ".") is not None]


def not_mergeable(name: str, why: str) -> TunesmithError:
    """The error ``merge`` raises for a method whose tuned model has no plain-transformers form."""
    return TunesmithError(f"method '{name}' cannot be merged into a plain model ({why}); "
                          "export the adapter and load it with the method instead", field="method.name")


__all__ = ["Method", "block_index", "block_linears", "not_mergeable", "trainable_state", "load_trainable_state",
           "save_tensors", "load_tensors", "count_trainable"]
