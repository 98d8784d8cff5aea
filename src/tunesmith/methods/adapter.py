"""Bottleneck adapters (Houlsby): a small residual MLP after each block's attention and MLP output."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import TunesmithError
from ..fsutil import atomic_write_json
from .base import block_linears, load_tensors, not_mergeable, save_tensors

# Output projections of attention and MLP sublayers across architecture families.
OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "out_proj", "dense", "dense_4h_to_h", "fc2", "c_proj", "w2", "wo")
WEIGHTS, CONFIG = "bottleneck_adapters.safetensors", "bottleneck_adapters.json"


class Bottleneck(nn.Module):
    """``h + up(gelu(down(h)))`` with ``up`` initialised to zero: the identity until trained."""

    def __init__(self, dim: int, size: int, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.down = nn.Linear(dim, size, dtype=dtype, device=device)
        self.act = nn.GELU()
        self.up = nn.Linear(size, dim, dtype=dtype, device=device)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class AdapterLinear(nn.Module):
    """A frozen ``nn.Linear`` followed by a bottleneck adapter on its output (the layer swap)."""

    def __init__(self, linear: nn.Linear, size: int):
        super().__init__()
        self.linear = linear
        self.adapter = Bottleneck(linear.out_features, size, dtype=linear.weight.dtype,
                                  device=linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.linear(x))


def adapter_targets(model) -> dict[str, int]:
    """Attention/MLP output projections inside blocks -> their output width."""
    found = {n: m.out_features for n, m in block_linears(model) if n.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS}
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in block_linears(model)})
        raise TunesmithError(f"adapter: no attention/MLP output projections found among {names}",
                             field="method.name")
    return found


def insert_adapters(model, targets: dict[str, int], size: int) -> None:
    """Freeze the model and wrap each target linear in an ``AdapterLinear`` (trainable adapter)."""
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for name in targets:
        model.set_submodule(name, AdapterLinear(modules[name], size))


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if ".adapter." in n}


class Adapter:
    """Houlsby-style adapters; the base stays frozen. Not mergeable: the adapter is nonlinear."""

    name = "adapter"
    mergeable = False
    has_adapter = True
    peft_adapter = False    # save() writes a peft adapter folder (PeftModel.from_pretrained loads it)
    shares_base = False     # a server can load it beside other adapters on one shared base
    virtual_tokens = False  # it adds virtual tokens to the input (a plain decoder cannot serve it)

    def apply(self, model, cfg, calibration=None) -> torch.nn.Module:
        insert_adapters(model, adapter_targets(model), cfg.adapter_size)
        return model

    def save(self, model, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        wrapped = {n: m for n, m in model.named_modules() if isinstance(m, AdapterLinear)}
        sizes = {m.adapter.down.out_features for m in wrapped.values()}
        save_tensors(adapter_state(model), out_dir / WEIGHTS, {"method": self.name})
        atomic_write_json(out_dir / CONFIG, {
            "method": self.name, "adapter_size": sizes.pop() if len(sizes) == 1 else sorted(sizes),
            "activation": "gelu", "placement": "after attention and MLP output projections",
            "targets": {n: m.linear.out_features for n, m in wrapped.items()}})

    def load(self, base_model, in_dir: Path, cfg) -> torch.nn.Module:
        in_dir = Path(in_dir)
        if not (in_dir / CONFIG).is_file() or not (in_dir / WEIGHTS).is_file():
            raise TunesmithError(f"no bottleneck adapter here (expected {CONFIG} and {WEIGHTS})", file=str(in_dir))
        config = json.loads((in_dir / CONFIG).read_text())
        state = load_tensors(in_dir / WEIGHTS)
        modules = dict(base_model.named_modules())
        problems = [f"{n} (missing)" if not isinstance(modules.get(n), nn.Linear)
                    else f"{n} (width {modules[n].out_features}, adapter expects {w})"
                    for n, w in config["targets"].items()
                    if not isinstance(modules.get(n), nn.Linear) or modules[n].out_features != w]
        if not problems:
            insert_adapters(base_model, config["targets"], int(config["adapter_size"]))
            expected = {n: tuple(p.shape) for n, p in adapter_state(base_model).items()}
            got = {n: tuple(t.shape) for n, t in state.items()}
            problems = [f"{n} (shape {got.get(n)} in file, {expected.get(n)} in model)"
                        for n in sorted(expected.keys() | got.keys()) if expected.get(n) != got.get(n)]
        if problems:
            raise TunesmithError(f"the adapter does not fit this base model: {len(problems)} mismatch(es), e.g. "
                                 + ", ".join(problems[:3]), file=str(in_dir))
        params = dict(base_model.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)
        for p in base_model.parameters():
            p.requires_grad_(False)
        return base_model

    def merge(self, model) -> torch.nn.Module:
        raise not_mergeable(self.name, "the adapters are nonlinear and cannot be folded into the weights")
