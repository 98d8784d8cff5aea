"""LoRA through peft (and its DoRA / rsLoRA variants): low-rank updates on the projections, mergeable."""
from __future__ import annotations

import torch

from .peft_method import PeftMethod

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


class LoRA(PeftMethod):
    """Plain LoRA: ``W + (alpha / r) * B @ A`` with ``B`` starting at zero."""

    name = "lora"
    peft_type = "LORA"
    shares_base = True
    use_dora = False      # DoRA: also learn a per-output-channel magnitude of the adapted weight
    use_rslora = False    # rsLoRA: scale alpha / sqrt(r), stable across ranks

    def peft_config(self, model, cfg):
        from peft import LoraConfig
        return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=target_modules(model, cfg.target_modules),
                          use_dora=self.use_dora, use_rslora=self.use_rslora,
                          bias="none", task_type="CAUSAL_LM")


class DoRA(LoRA):
    """Weight-decomposed LoRA: LoRA on the direction plus a trained magnitude vector per layer."""

    name = "dora"
    use_dora = True


class RsLoRA(LoRA):
    """Rank-stabilised LoRA: the update is scaled by alpha / sqrt(r) instead of alpha / r."""

    name = "rslora"
    use_rslora = True
