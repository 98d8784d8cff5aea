"""Prompt learning through peft: soft prompt tuning and prefix tuning (virtual tokens, not mergeable)."""
from __future__ import annotations

from ..errors import TunesmithError
from .peft_method import PeftMethod


def tokenizer_source(model) -> str:
    """Where the base model's tokenizer loads from offline (the folder/hub id it was loaded from)."""
    from transformers import AutoTokenizer
    candidates = [getattr(model, "name_or_path", None), getattr(model.config, "_name_or_path", None)]
    tried = []
    for source in dict.fromkeys(str(c) for c in candidates if c):
        try:
            AutoTokenizer.from_pretrained(source)
            return source
        except (OSError, ValueError) as e:
            tried.append(f"{source!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    detail = "; ".join(tried) if tried else "the model records no folder it was loaded from"
    raise TunesmithError("prompt_tuning: initialising the soft prompt from text needs the base model's "
                         f"tokenizer, which could not be loaded ({detail}); load the model from a local "
                         "folder or set method.prompt_init_text to null", field="method.prompt_init_text")


class PromptTuning(PeftMethod):
    """Trainable input embeddings of ``num_virtual_tokens`` prepended to every sequence.

    Initialised from the embeddings of ``prompt_init_text`` (repeated/truncated to the length) or
    randomly when it is null. The soft prompt is not a weight of the model: not mergeable.
    """

    name = "prompt_tuning"
    mergeable = False
    why_not_mergeable = "the soft prompt is extra input embeddings, not a change of the weights"

    def peft_config(self, model, cfg):
        from peft import PromptTuningConfig, PromptTuningInit
        if cfg.prompt_init_text is None:
            return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                      prompt_tuning_init=PromptTuningInit.RANDOM)
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.TEXT,
                                  prompt_tuning_init_text=cfg.prompt_init_text,
                                  tokenizer_name_or_path=tokenizer_source(model))


class PrefixTuning(PeftMethod):
    """Trainable keys/values of ``num_virtual_tokens`` positions in every attention layer.

    peft passes them as a pre-filled KV cache (one key and one value vector of the KV width per
    virtual token and layer). Not mergeable: they are attention inputs, not weights.
    """

    name = "prefix_tuning"
    mergeable = False
    why_not_mergeable = "the prefix is extra attention keys/values, not a change of the weights"

    def peft_config(self, model, cfg):
        from peft import PrefixTuningConfig
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens)
