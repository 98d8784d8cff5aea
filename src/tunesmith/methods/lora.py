"""LoRA through peft: low-rank updates on the attention and MLP projections, mergeable."""
from __future__ import annotations

from pathlib import Path

import torch

# Linear projections by architecture family; `auto` picks every one present in the model.
_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "qkv_proj", "gate_up_proj", "c_attn", "c_proj", "c_fc", "query_key_value", "dense",
                "dense_h_to_4h", "dense_4h_to_h", "fc1", "fc2", "out_proj", "Wqkv", "Wo", "w1", "w2", "w3"]


def target_modules(model, requested) -> list[str]:
    if requested != "auto":
        return list(requested)
    present = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and "lm_head" not in name}
    found = [p for p in _PROJECTIONS if p in present]
    if not found:
        raise ValueError(f"no known projection layers found; set method.target_modules from: {sorted(present)}")
    return found


class LoRA:
    name = "lora"
    mergeable = True
    has_adapter = True

    def apply(self, model, cfg):
        from peft import LoraConfig, get_peft_model
        config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                            target_modules=target_modules(model, cfg.target_modules),
                            bias="none", task_type="CAUSAL_LM")
        return get_peft_model(model, config)

    def save(self, model, out_dir: Path) -> None:
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, base_model, in_dir: Path, cfg):
        from peft import PeftModel
        return PeftModel.from_pretrained(base_model, in_dir, is_trainable=False)

    def merge(self, model):
        return model.merge_and_unload()
