"""Dropout that keeps a one-byte mask for the backward instead of a full-precision noise tensor (same draws).

On the CPU, ``torch.nn.Dropout`` multiplies its input by a noise tensor of the input's dtype (0 or 1/(1-p))
and autograd keeps that tensor until the backward: 4 bytes per element in fp32. LoRA puts a dropout in
front of every adapted projection (peft's ``lora_dropout``, 0.05 by default), so a training step keeps one
such tensor per projection and layer: on SmolLM2-135M at batch 8 that is over a third of everything saved
for the backward. :class:`LeanDropout` draws the same noise with the same generator call, keeps only
``noise != 0`` as a bool tensor, and rebuilds the factor in the backward: outputs and gradients are bit
for bit those of ``nn.Dropout``. CUDA's fused dropout already keeps a bool mask and is left alone.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class _MaskedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        noise = torch.empty_like(x).bernoulli_(1 - p)    # the draw torch's CPU dropout makes
        mask = noise.bool()
        noise.div_(1 - p)
        ctx.save_for_backward(mask)
        ctx.p = p
        return x * noise

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype).div_(1 - ctx.p), None


class LeanDropout(torch.nn.Dropout):
    """``nn.Dropout`` whose backward keeps a bool mask (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or self.inplace or not 0 < self.p < 1 or x.device.type == "cuda"
                or not x.is_floating_point() or x.numel() == 0):
            return super().forward(x)
        return _MaskedDropout.apply(x, self.p)


@contextmanager
def lean_dropout(model: torch.nn.Module):
    """Inside the block every plain ``nn.Dropout`` of ``model`` is a :class:`LeanDropout`; yields how many."""
    swapped = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    for m in swapped:
        m.__class__ = LeanDropout
    try:
        yield len(swapped)
    finally:
        for m in swapped:
            m.__class__ = torch.nn.Dropout


__all__ = ["LeanDropout", "lean_dropout"]
