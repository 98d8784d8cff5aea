"""(IA)^3 through peft: learned rescaling of attention keys/values and the MLP's inner activations."""
from __future__ import annotations

from ..errors import TunesmithError
from .base import block_linears
from .peft_method import PeftMethod

# Fallbacks when peft has no mapping for the architecture: key/value projections (output scaled)
# and MLP down projections (input scaled, i.e. "feedforward" modules in peft's terms).
_KEY_VALUE = ["k_proj", "v_proj", "key", "value", "qkv_proj", "query_key_value", "Wqkv", "c_attn"]
_MLP_DOWN = ["down_proj", "fc2", "dense_4h_to_h", "w2", "c_proj"]


def ia3_targets(model, requested) -> tuple[list[str], list[str]]:
    """``(target_modules, feedforward_modules)`` for ``model``; feedforward is a subset of targets."""
    from peft.utils import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF,
                            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS)
    if requested != "auto":
        targets = list(requested)
        return targets, [t for t in targets if t in _MLP_DOWN]
    model_type = getattr(model.config, "model_type", None)
    if model_type in TARGETS and model_type in FF:
        targets = list(TARGETS[model_type])
        return targets, [t for t in FF[model_type] if t in targets]
    present = {n.rsplit(".", 1)[-1] for n, _ in block_linears(model)}
    kv = [t for t in _KEY_VALUE if t in present]
    down = [t for t in _MLP_DOWN if t in present and t not in kv][:1]
    if not kv and not down:
        raise TunesmithError(f"ia3: no key/value or MLP down projections found in '{model_type}'; set "
                             f"method.target_modules from: {sorted(present)}", field="method.target_modules")
    return kv + down, down


class IA3(PeftMethod):
    """Element-wise scaling vectors (initialised to one, so the model starts unchanged); mergeable."""

    name = "ia3"

    def peft_config(self, model, cfg):
        from peft import IA3Config
        targets, feedforward = ia3_targets(model, cfg.target_modules)
        return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
