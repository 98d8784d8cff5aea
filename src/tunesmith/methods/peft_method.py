"""Shared plumbing of the peft-backed methods: wrap with a peft config, save/load the adapter, merge."""
from __future__ import annotations

from pathlib import Path

import torch

from .base import not_mergeable


class PeftMethod:
    """A method whose adapter is a peft ``PeftConfig``; subclasses implement ``peft_config``.

    ``save`` writes peft's ``adapter_model.safetensors`` + ``adapter_config.json``; ``load``
    attaches them to a fresh base (frozen, for inference); ``merge`` is peft's
    ``merge_and_unload`` for mergeable methods and a clear error otherwise.
    """

    name = "peft"
    mergeable = True
    has_adapter = True
    peft_adapter = True    # save() writes a peft adapter folder (PeftModel.from_pretrained loads it)
    shares_base = False     # a server can load it beside other adapters on one shared base
    virtual_tokens = False  # it adds virtual tokens to the input (a plain decoder cannot serve it)
    why_not_mergeable = ""
    peft_type: str | None = None   # peft's PeftType of the adapters it makes (checked when one is loaded to continue)

    def peft_config(self, model, cfg):
        raise NotImplementedError

    def apply(self, model, cfg, calibration=None) -> torch.nn.Module:
        from peft import get_peft_model
        init_from = getattr(cfg, "init_from", None)
        if init_from:               # continue training a saved adapter (a parent version's)
            return self.load_trainable(model, Path(init_from))
        return get_peft_model(model, self.peft_config(model, cfg))

    def load_trainable(self, base_model, in_dir: Path) -> torch.nn.Module:
        """A saved adapter of this method on ``base_model``, its weights trainable (the starting point of a
        continued version); a missing folder or another method's adapter is a one-line error."""
        from peft import PeftConfig, PeftModel

        from ..errors import TunesmithError
        if not (in_dir / "adapter_config.json").is_file():
            raise TunesmithError("no adapter to continue from (adapter_config.json missing)", file=str(in_dir),
                                 field="method.init_from")
        saved = PeftConfig.from_pretrained(str(in_dir))
        kind = getattr(saved.peft_type, "value", saved.peft_type)
        if self.peft_type and kind != self.peft_type:
            raise TunesmithError(f"the adapter is a {kind} adapter, not one of method {self.name}",
                                 file=str(in_dir), field="method.init_from")
        return PeftModel.from_pretrained(base_model, str(in_dir), is_trainable=True)

    def save(self, model, out_dir: Path) -> None:
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, base_model, in_dir: Path, cfg) -> torch.nn.Module:
        from peft import PeftModel
        return PeftModel.from_pretrained(base_model, in_dir, is_trainable=False)

    def merge(self, model) -> torch.nn.Module:
        if not self.mergeable:
            raise not_mergeable(self.name, self.why_not_mergeable)
        return model.merge_and_unload()
