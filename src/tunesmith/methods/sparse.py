"""Sparse fine-tuning: train a chosen fraction of the block weights as a sparse delta on frozen weights."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import TunesmithError
from ..fsutil import atomic_write_json
from .base import block_linears, load_tensors, save_tensors

WEIGHTS, CONFIG = "sparse_delta.safetensors", "sparse_delta.json"


class SparseDelta(nn.Module):
    """Parametrization ``weight = frozen + scatter(delta -> indices)``.

    Only ``delta`` (one value per selected entry) is a parameter; the frozen weight and the
    unselected entries are not, so no optimizer setting (weight decay included) can move them.
    """

    def __init__(self, indices: torch.Tensor, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.register_buffer("indices", indices.to(device=device, dtype=torch.long))
        self.delta = nn.Parameter(torch.zeros(indices.numel(), dtype=dtype, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(-1).index_add(0, self.indices, self.delta).view_as(weight)


def budget(numel: int, fraction: float) -> int:
    """Entries trained in a weight of ``numel`` entries: ``max(1, round(fraction * numel))``."""
    return max(1, round(fraction * numel))


def _gradients(model, calibration) -> dict[str, torch.Tensor]:
    """|d loss / d W| of every block linear on the calibration batch (model left as it was)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    layers = block_linears(model)
    for _, linear in layers:
        linear.weight.grad = None
        linear.weight.requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            calibration(model).backward()
        return {n: (lin.weight.grad if lin.weight.grad is not None else torch.zeros_like(lin.weight)).abs()
                for n, lin in layers}
    finally:
        model.train(was_training)
        for _, linear in layers:
            linear.weight.grad = None
        for p, flag in flags:
            p.requires_grad_(flag)


def select(model, fraction: float, selection: str, calibration=None) -> dict[str, torch.Tensor]:
    """Per block linear, the sorted flat indices of the ``budget`` entries to train."""
    if selection == "gradient":
        if calibration is None:
            raise TunesmithError("sparse: sparse_selection 'gradient' needs a calibration batch "
                                 "(apply(model, cfg, calibration=f)); none was given — use 'magnitude' or "
                                 "'random', or pass one", field="method.sparse_selection")
        scores = _gradients(model, calibration)
    chosen = {}
    for name, linear in block_linears(model):
        w = linear.weight.detach()
        k = budget(w.numel(), fraction)
        if selection == "random":   # seeded per layer: the same entries on every apply (resume)
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            idx = torch.randperm(w.numel(), generator=gen)[:k]
        else:
            score = scores[name] if selection == "gradient" else w.abs()
            idx = torch.topk(score.reshape(-1).float().cpu(), k).indices
        chosen[name] = idx.sort().values
    return chosen


def attach(model, chosen: dict[str, torch.Tensor]) -> None:
    """Freeze the model and parametrize each chosen linear's weight with a zero ``SparseDelta``."""
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for name, idx in chosen.items():
        w = modules[name].weight
        parametrize.register_parametrization(modules[name], "weight",
                                             SparseDelta(idx, dtype=w.dtype, device=w.device))


def _deltas(model) -> dict[str, SparseDelta]:
    return {n: m.parametrizations.weight[0] for n, m in model.named_modules()
            if parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], SparseDelta)}


class Sparse:
    """Train ``sparse_fraction`` of each block linear's entries, chosen by gradient, magnitude or at random.

    Selection is per layer (each gets the same fraction). The trainable tensor is a separate
    delta over the selected entries (``torch.nn.utils.parametrize``), so the frozen weights stay
    bit-identical by construction — a gradient mask would not be enough, because decoupled weight
    decay moves masked entries too. (The loop applies no weight decay to these 1-D deltas; the
    frozen entries are exact whatever it does.) ``save`` writes just the deltas: int32 indices +
    values; ``merge`` folds them into plain weights.
    """

    name = "sparse"
    peft_adapter = False    # save() writes a peft adapter folder (PeftModel.from_pretrained loads it)
    shares_base = False     # a server can load it beside other adapters on one shared base
    virtual_tokens = False  # it adds virtual tokens to the input (a plain decoder cannot serve it)
    mergeable = True
    has_adapter = True

    def apply(self, model, cfg, calibration=None) -> torch.nn.Module:
        attach(model, select(model, cfg.sparse_fraction, cfg.sparse_selection, calibration))
        return model

    def save(self, model, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        deltas, modules = _deltas(model), dict(model.named_modules())
        state, shapes = {}, {}
        for name, d in deltas.items():
            original = modules[name].parametrizations.weight.original
            shapes[name] = list(original.shape)
            index_dtype = torch.int32 if original.numel() < 2 ** 31 else torch.int64
            state[f"{name}.indices"] = d.indices.to(index_dtype)
            state[f"{name}.values"] = d.delta.detach()
        save_tensors(state, out_dir / WEIGHTS, {"method": self.name})
        atomic_write_json(out_dir / CONFIG, {"method": self.name, "layers": shapes,
                                             "entries": sum(d.indices.numel() for d in deltas.values())})

    def load(self, base_model, in_dir: Path, cfg) -> torch.nn.Module:
        in_dir = Path(in_dir)
        if not (in_dir / CONFIG).is_file() or not (in_dir / WEIGHTS).is_file():
            raise TunesmithError(f"no sparse delta here (expected {CONFIG} and {WEIGHTS})", file=str(in_dir))
        shapes = json.loads((in_dir / CONFIG).read_text())["layers"]
        state = load_tensors(in_dir / WEIGHTS)
        modules = dict(base_model.named_modules())
        problems = []
        for name, shape in shapes.items():
            m, idx = modules.get(name), state.get(f"{name}.indices")
            if not isinstance(m, nn.Linear) or list(m.weight.shape) != shape:
                problems.append(f"{name} (delta for shape {shape}, model has "
                                f"{list(m.weight.shape) if isinstance(m, nn.Linear) else 'no such linear'})")
            elif idx is None or f"{name}.values" not in state or idx.numel() != state[f"{name}.values"].numel() \
                    or (idx.numel() and int(idx.max()) >= m.weight.numel()):
                problems.append(f"{name} (indices/values missing or out of range)")
        if problems:
            raise TunesmithError(f"the sparse delta does not fit this base model: {len(problems)} mismatch(es), "
                                 "e.g. " + ", ".join(problems[:3]), file=str(in_dir))
        attach(base_model, {n: state[f"{n}.indices"].long() for n in shapes})
        with torch.no_grad():
            for name, d in _deltas(base_model).items():
                d.delta.copy_(state[f"{name}.values"])
        for p in base_model.parameters():
            p.requires_grad_(False)
        return base_model

    def merge(self, model) -> torch.nn.Module:
        modules = dict(model.named_modules())
        for name in _deltas(model):
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=True)
        return model
