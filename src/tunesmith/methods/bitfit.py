"""BitFit: train only biases and normalisation weights (adding zero biases where the model has none)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import TunesmithError
from .base import block_linears
from .full import Full

# Block sublayer (parent module of a projection) -> the config flag that gives its projections biases.
_GROUPS = {"self_attn": "attention_bias", "attn": "attention_bias", "attention": "attention_bias",
           "self_attention": "attention_bias", "mlp": "mlp_bias", "feed_forward": "mlp_bias"}


def _by_flag(model) -> dict[str, list[nn.Linear]]:
    """Block projections grouped by the config flag controlling their bias (only flags the config has)."""
    groups: dict[str, list[nn.Linear]] = {}
    for name, linear in block_linears(model):
        flag = _GROUPS.get(name.rsplit(".", 2)[-2])
        if flag is not None and hasattr(model.config, flag):
            groups.setdefault(flag, []).append(linear)
    return groups


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


class BitFit(Full):
    """Biases and norm weights train; everything else is frozen.

    Projections whose bias the architecture's config can switch on (Llama's ``attention_bias`` /
    ``mlp_bias``) get a zero bias parameter when they have none (a layer swap of ``linear.bias``),
    so the model computes exactly the same function before training. ``merge`` sets those flags,
    so the tuned model saves and reloads as a plain transformers model. ``save`` writes only the
    trained tensors.
    """

    name = "bitfit"
    mergeable = True
    has_adapter = False

    def apply(self, model, cfg, calibration=None) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        for linears in _by_flag(model).values():
            for linear in linears:
                if linear.bias is None:
                    linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                                           device=linear.weight.device))
        for module in model.modules():
            for pname, p in module.named_parameters(recurse=False):
                if pname == "bias" or _is_norm(module):
                    p.requires_grad_(True)
        return model

    def merge(self, model) -> torch.nn.Module:
        for flag, linears in _by_flag(model).items():
            with_bias = sum(linear.bias is not None for linear in linears)
            if with_bias == len(linears):
                setattr(model.config, flag, True)
            elif with_bias:
                raise TunesmithError(f"bitfit: only {with_bias} of {len(linears)} projections under "
                                     f"'{flag}' have a bias; the config cannot describe that", field="method.name")
        return model
