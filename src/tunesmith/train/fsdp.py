"""Fully sharded data parallel training (``train.strategy: fsdp``): every weight, gradient and optimizer state
is split across the ranks by torch's FSDP2 (``fully_shard``), one unit per transformer block.

The settings are generated from the recipe in accelerate's FSDP2 config vocabulary (:func:`accelerate_config`:
what :meth:`Sharded.wrap` shards with, and what the run folder keeps as ``fsdp.yaml``). The ranks call
``fully_shard`` themselves, the call accelerate's own FSDP2 preparation makes, because accelerate applies its
FSDP plugin only on accelerators (on CPU it trains unsharded); this way the same path runs on CPU (gloo) and
CUDA (NCCL). Checkpoints and the saved model hold whole tensors: the ranks gather them together.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..fsutil import atomic_write_text
from ..methods.base import load_trainable_state
from . import distributed as ddp

CONFIG_FILE = "fsdp.yaml"        # in the run folder: the settings the ranks sharded with


def block_classes(model: torch.nn.Module) -> list[str]:
    """Names of the transformer block classes to shard as units: what the model declares as not to be split
    (transformers' ``_no_split_modules``, looked up through wrappers such as peft's) that it contains; else
    the class of the items of its longest ``ModuleList`` (the layer stack)."""
    present = {type(m).__name__ for m in model.modules()}
    declared = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
    found = sorted(declared & present)
    if found:
        return found
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    return [type(max(stacks, key=len)[0]).__name__] if stacks else []


def accelerate_config(cfg, model: torch.nn.Module) -> dict:
    """The run's sharding as an accelerate config (``accelerate launch --config_file``'s format, FSDP2)."""
    return {"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "num_processes": cfg.nproc,
            "num_machines": 1, "machine_rank": 0, "mixed_precision": "no", "use_cpu": cfg.device == "cpu",
            "fsdp_config": {
                "fsdp_version": 2,
                "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_transformer_layer_cls_to_wrap": ",".join(block_classes(model)),
                "fsdp_reshard_after_forward": True,
                "fsdp_state_dict_type": "FULL_STATE_DICT",
                "fsdp_offload_params": False,
                "fsdp_cpu_ram_efficient_loading": False,
                "fsdp_activation_checkpointing": bool(cfg.gradient_checkpointing)}}


def write_config(run_dir: Path, config: dict) -> Path:
    import yaml
    path = Path(run_dir) / CONFIG_FILE
    atomic_write_text(path, "# the sharding this run trained with (accelerate's FSDP2 config format)\n"
                            + yaml.safe_dump(config, sort_keys=False))
    return path


def _is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def whole_trainable_state(model) -> dict:
    """Whole trainable weights by name, on CPU, on every rank (sharded ones are gathered: all ranks must call)."""
    return {n: (p.full_tensor() if _is_sharded(p) else p).detach().cpu().clone()
            for n, p in model.named_parameters() if p.requires_grad}


class _Root(torch.nn.Module):
    """The FSDP root around the model: its forward runs the objective on the model, so the weights outside the
    blocks (embeddings, final norm, output head: objectives call the decoder and the head directly, not the
    model's forward) are gathered for every use and their gradients reduced. The result goes out as a dict so
    that FSDP finds its tensors (for the backward hooks)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, objective, batch):
        out = objective(self.model, batch)
        return type(out), {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}


class _Through:
    """``objective`` run through the FSDP root; its other attributes are the objective's."""

    def __init__(self, objective, root: _Root):
        self._objective, self._root = objective, root

    def __call__(self, model, batch):
        kind, fields = self._root(self._objective, batch)
        return kind(**fields)

    def __getattr__(self, name):
        return getattr(self._objective, name)


class Sharded:
    """The loop's data-parallel strategy with sharded weights (see :class:`distributed.Replicated` for the
    methods' contract). Every rank runs every micro-batch (a rank with no items in one runs a weightless
    copy): the blocks' weights are gathered for each forward, so all ranks must take part."""
    name = "fsdp"
    every_rank_steps = True

    def __init__(self, ranks: ddp.Ranks, device, config: dict):
        self.ranks, self.device, self.config = ranks, device, config
        # FSDP averages gradients over the ranks (a sum with a divide factor needs PREMUL_SUM, which gloo lacks);
        # the loss is already divided by the whole batch's loss units, so the backward pass is scaled to sum
        self.backward_scale = float(ranks.world)

    def wrap(self, model):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        model = model.to(self.device)
        ddp.broadcast_parameters([p for p in model.parameters() if p.requires_grad], self.ranks)
        settings = self.config["fsdp_config"]
        blocks = set(filter(None, settings["fsdp_transformer_layer_cls_to_wrap"].split(",")))
        mesh = init_device_mesh(self.device.type, (self.ranks.world,))
        reshard = settings["fsdp_reshard_after_forward"]
        for m in list(model.modules()):
            if type(m).__name__ in blocks:
                fully_shard(m, mesh=mesh, reshard_after_forward=reshard)
        self.root = _Root(model)
        fully_shard(self.root, mesh=mesh, reshard_after_forward=reshard)
        return model

    def through(self, objective):
        """``objective`` as the loop calls it: through the FSDP root (see :class:`_Root`)."""
        return _Through(objective, self.root)

    def sync(self, model, on: bool) -> None:
        """Reduce-scatter gradients after this backward (the last micro-batch of a step) or keep accumulating."""
        self.root.set_requires_gradient_sync(on)

    def reduce_gradients(self, params) -> None:
        """Nothing left to do: the backward pass reduce-scattered them."""

    def trainable_state(self, model) -> dict:
        return whole_trainable_state(model)

    def load_trainable(self, model, weights: dict) -> None:
        """Whole weights into this rank's parts (every rank holds the whole ``weights``)."""
        from torch.distributed.tensor import distribute_tensor
        params = dict(model.named_parameters())
        load_trainable_state(model, {n: w for n, w in weights.items()     # raises on names the model lacks
                                     if n not in params or not _is_sharded(params[n])})
        with torch.no_grad():
            for n, w in weights.items():
                if _is_sharded(p := params[n]):
                    part = distribute_tensor(w.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
                    p.to_local().copy_(part.to_local())

    def optimizer_state(self, model, optimizer) -> dict:
        """The whole optimizer state by parameter name (on rank 0; all ranks must call)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(self.root, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer(self, model, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(self.root, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))

    def spread(self, params) -> float | None:
        """Not measured: each rank holds a different part of every weight."""
        return None


__all__ = ["block_classes", "accelerate_config", "write_config", "whole_trainable_state", "Sharded", "CONFIG_FILE"]
