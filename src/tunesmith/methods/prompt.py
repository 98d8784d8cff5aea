"""Prompt learning through peft: soft prompt tuning and prefix tuning (virtual tokens, not mergeable)."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

from ..errors import TunesmithError
from .peft_method import PeftMethod

# peft releases up to this one find the KV cache of a generate() step under ``past_key_values``.
# transformers 5.24 renamed it ``cache`` (model forward, generate's model kwargs and the dict that
# ``prepare_inputs_for_generation`` returns), so with those peft releases prompt tuning re-inserted its
# soft prompt at every decoding step and prefix tuning's prefix cache was dropped (generate kept using
# its own, prefix-less cache): wrong replies, batched or not. ``keep_generation_cache`` bridges it.
LAST_PEFT_WITHOUT_CACHE_RENAME = "0.21.2"


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


def generate_passes_cache_as_cache() -> bool:
    """Whether this transformers' generate() hands the KV cache to the model as ``cache`` (5.24+)."""
    from transformers import GenerationMixin
    return "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters


def needs_cache_bridge() -> bool:
    """transformers names the generation cache ``cache`` but peft's prompt learning expects ``past_key_values``."""
    import peft
    from packaging.version import Version
    return generate_passes_cache_as_cache() and \
        Version(peft.__version__) <= Version(LAST_PEFT_WITHOUT_CACHE_RENAME)


def keep_generation_cache(model):
    """Make peft prompt learning see generate()'s KV cache again (see LAST_PEFT_WITHOUT_CACHE_RENAME).

    peft's ``prepare_inputs_for_generation`` calls the base model's one, then decides from
    ``past_key_values`` whether this is the first step (inject the soft prompt / the prefix cache)
    and how long the attention mask must be. The base's result is handed to it with the cache under
    ``past_key_values`` and peft's result goes to the model with it under ``cache`` again. Nothing
    changes where transformers and peft agree; returns ``model`` (patched in place).
    """
    base_prepare = getattr(model, "base_model_prepare_inputs_for_generation", None)
    if base_prepare is None or getattr(model, "_tunesmith_cache_bridge", False) or not needs_cache_bridge():
        return model
    peft_prepare = model.prepare_inputs_for_generation

    @functools.wraps(base_prepare)
    def base_with_past_key_values(*args, **kwargs):
        inputs = base_prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    @functools.wraps(peft_prepare)
    def prepare_inputs_for_generation(*args, **kwargs):
        # only for this call: peft's generate() later puts base_model_prepare_inputs_for_generation
        # back on the base model, which must then be transformers' own again
        model.base_model_prepare_inputs_for_generation = base_with_past_key_values
        try:
            inputs = peft_prepare(*args, **kwargs)
        finally:
            model.base_model_prepare_inputs_for_generation = base_prepare
        if "past_key_values" in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    model.prepare_inputs_for_generation = prepare_inputs_for_generation   # peft.generate installs it on the base
    model._tunesmith_cache_bridge = True
    return model


class PromptLearning(PeftMethod):
    """peft prompt learning; the wrapped model generates correctly on either side of the cache rename."""

    def apply(self, model, cfg, calibration=None):
        return keep_generation_cache(super().apply(model, cfg, calibration))

    def load(self, base_model, in_dir: Path, cfg):
        return keep_generation_cache(super().load(base_model, in_dir, cfg))


class PromptTuning(PromptLearning):
    """Trainable input embeddings of ``num_virtual_tokens`` prepended to every sequence.

    Initialised from the embeddings of ``prompt_init_text`` (repeated/truncated to the length) or
    randomly when it is null. The soft prompt is not a weight of the model: not mergeable.
    """

    name = "prompt_tuning"
    virtual_tokens = True
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


class PrefixTuning(PromptLearning):
    """Trainable keys/values of ``num_virtual_tokens`` positions in every attention layer.

    peft passes them as a pre-filled KV cache (one key and one value vector of the KV width per
    virtual token and layer). Not mergeable: they are attention inputs, not weights.
    """

    name = "prefix_tuning"
    virtual_tokens = True
    mergeable = False
    why_not_mergeable = "the prefix is extra attention keys/values, not a change of the weights"

    def peft_config(self, model, cfg):
        from peft import PrefixTuningConfig
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens)
