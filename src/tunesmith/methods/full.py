"""Full fine-tuning: every weight trains; the tuned model is itself the export."""
from __future__ import annotations

from pathlib import Path

from .base import load_tensors, load_trainable_state, save_tensors, trainable_state


class Full:
    name = "full"
    mergeable = True
    has_adapter = False
    peft_adapter = False    # save() writes a peft adapter folder (PeftModel.from_pretrained loads it)
    shares_base = False     # a server can load it beside other adapters on one shared base
    virtual_tokens = False  # it adds virtual tokens to the input (a plain decoder cannot serve it)

    def apply(self, model, cfg, calibration=None):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(trainable_state(model), out_dir / "tuned_weights.safetensors", {"method": self.name})

    def load(self, base_model, in_dir: Path, cfg):
        model = self.apply(base_model, cfg)
        load_trainable_state(model, load_tensors(in_dir / "tuned_weights.safetensors"))
        return model

    def merge(self, model):
        return model
