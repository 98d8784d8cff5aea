"""The frozen base held in the training precision while training, its exact fp32 weights restored afterwards.

Under bf16 autocast a frozen fp32 linear weight is cast to bf16 in every forward (autocast caches casts only
for weights that require grad), and that copy is kept for the backward: the base's weights then take their
fp32 memory *plus* a bf16 copy per step. Holding the frozen linear weights in bf16 for the length of training
computes exactly the same (autocast would have rounded them to the same bf16 values), drops both the fp32
tensors and the per-step copies, and skips the casts. Trainable parameters (adapters, heads, biases that
train) and the optimizer state are untouched and stay fp32.

The fp32 originals are spilled to a temporary safetensors file before the cast and copied back when training
ends, so evaluation, merge and export after training see the model exactly as it was loaded. Embeddings (and
an output head tied to them) stay fp32: they carry the fp32 residual stream.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch

from .precision import DTYPES

NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass
class Held:
    """What :func:`held_in` did: the dtype the frozen linear weights were held in and how many elements."""
    dtype: str = "fp32"
    tensors: int = 0
    elements: int = 0
    note: str | None = None            # why the base was not held, when it could have been

    def as_dict(self) -> dict:
        out = {"frozen_base": self.dtype, "frozen_tensors": self.tensors, "frozen_elements": self.elements}
        return {**out, "frozen_note": self.note} if self.note else out


def frozen_linear_tensors(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The fp32 weights and biases of ``model``'s linear layers that do not train, by name; weights shared with
    an embedding (a tied output head) are left out."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out: dict[str, torch.nn.Parameter] = {}
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        for attr in ("weight", "bias"):
            p = getattr(mod, attr, None)
            if not isinstance(p, torch.nn.Parameter) or p.requires_grad or p.dtype != torch.float32:
                continue
            if id(p) in embeddings or id(p) in seen:
                continue
            seen.add(id(p))
            out[f"{mod_name}.{attr}" if mod_name else attr] = p
    return out


@contextmanager
def held_in(model: torch.nn.Module, dtype: torch.dtype, *, spill_dir: str | None = None):
    """Hold ``model``'s frozen linear weights in ``dtype`` inside the block; yields a :class:`Held` record.

    fp32 (or a model without frozen linear weights) does nothing. On exit, normal or not, every held tensor
    gets its original fp32 values back, bit for bit."""
    tensors = frozen_linear_tensors(model) if dtype != torch.float32 else {}
    if not tensors:
        yield Held()
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, note = None, None
    try:
        fd, path = tempfile.mkstemp(prefix="tunesmith-frozen-", suffix=".safetensors", dir=spill_dir)
        os.close(fd)
        save_file({name: p.detach().cpu().contiguous() for name, p in tensors.items()}, path)
    except OSError as e:              # no temporary space: train with the base as it is
        note = f"kept fp32: could not write its fp32 copy to a temporary file ({e})"
    if note is not None:
        _unlink(path)
        yield Held(note=note)
        return
    try:
        try:
            for p in tensors.values():
                p.data = p.data.to(dtype)
            yield Held(dtype=NAMES.get(dtype, str(dtype)), tensors=len(tensors),
                       elements=sum(p.numel() for p in tensors.values()))
        finally:
            with safe_open(path, framework="pt") as f:
                for name, p in tensors.items():
                    p.data = f.get_tensor(name).to(p.device)
    finally:
        _unlink(path)


def _unlink(path: str | None) -> None:
    if path:
        with suppress(OSError):
            os.unlink(path)


__all__ = ["held_in", "frozen_linear_tensors", "Held"]
