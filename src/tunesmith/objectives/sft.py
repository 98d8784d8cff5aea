"""Supervised next-token cross-entropy on trained tokens only (SFT, continued pretraining), with NEFTune."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE, collate, pack, tokenize_all


@dataclass
class LossOutput:
    loss_sum: torch.Tensor   # summed loss over the batch's loss units (divided by the step's total)
    count: int               # loss units covered (target tokens, pairs or examples)
    metrics: dict | None = None   # optional sums to log (e.g. reward accuracy), divided by count


def core_model(model):
    """The Hugging Face model under a peft wrapper (peft injects its layers in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_prompt_learning(model) -> bool:
    """True for peft prompt/prefix tuning, whose wrapper must run the forward itself."""
    cfg = getattr(model, "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


class SFTObjective:
    """Cross-entropy on the labelled tokens.

    Only hidden states at trained positions go through the output projection: with a
    49k-token vocabulary the full logits dominate time and memory, and prompt tokens
    (most of a chat example) have no loss anyway. Prompt-learning methods (soft prompts,
    prefixes) run through the peft wrapper, which prepends their virtual tokens.
    """

    name = "sft"
    generates_text = True       # the tuned model answers in text (else it predicts with its own head)
    compares_baselines = True   # judged against zero-shot / few-shot / RAG on the task metric
    trains_on_text = True       # plain text can be mixed into its training (forgetting.replay)
    own_model = False            # the tuned model is a new model (not the recipe's base plus the method)

    def __init__(self, label_smoothing: float = 0.0, neftune_alpha: float | None = None):
        self.label_smoothing = label_smoothing
        self.neftune_alpha = neftune_alpha

    # ---- data ----------------------------------------------------------------------------------
    def build(self, splits: dict, tokenizer, recipe) -> tuple[dict, dict]:
        """Tokenise every split (and pack the training split when asked)."""
        seqs, stats = {}, {}
        for name, examples in splits.items():
            seqs[name], stats[name] = tokenize_all(examples, tokenizer, recipe.data.max_length)
        if recipe.data.packing:
            seqs["train"] = pack(seqs["train"], recipe.data.max_length, seed=recipe.train.seed)
        return seqs, stats

    collate = staticmethod(collate)

    # ---- loss ----------------------------------------------------------------------------------
    def _inputs(self, core, input_ids, model) -> dict:
        if not (self.neftune_alpha and model.training):
            return {"input_ids": input_ids}
        # NEFTune: uniform noise scaled by alpha / sqrt(seq_len * dim) on the input embeddings
        embeds = core.get_input_embeddings()(input_ids)
        scale = self.neftune_alpha / math.sqrt(input_ids.shape[1] * embeds.shape[-1])
        return {"inputs_embeds": embeds + torch.empty_like(embeds).uniform_(-scale, scale)}

    def __call__(self, model, batch: dict) -> LossOutput:
        targets = batch["labels"][:, 1:]
        if is_prompt_learning(model):
            return self._via_wrapper(model, batch)
        core = core_model(model)
        backbone, head = core.get_decoder(), core.get_output_embeddings()
        inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
        hidden = backbone(**self._inputs(core, batch["input_ids"], model), **inputs,
                          use_cache=False).last_hidden_state
        keep = targets != IGNORE
        logits = head(hidden[:, :-1][keep]).float()
        loss = F.cross_entropy(logits, targets[keep], reduction="sum", label_smoothing=self.label_smoothing)
        return LossOutput(loss, int(keep.sum()))

    def _via_wrapper(self, model, batch: dict) -> LossOutput:
        if "position_ids" in batch:
            from ..errors import TunesmithError
            raise TunesmithError("packing cannot be combined with prompt/prefix tuning (their virtual tokens "
                                 "would be shared by every packed example); set data.packing: false",
                                 field="data.packing")
        inputs = {**self._inputs(core_model(model), batch["input_ids"], model),
                  "attention_mask": batch["attention_mask"]}
        logits = model(**inputs, use_cache=False).logits
        n = batch["input_ids"].shape[1]
        logits = logits[:, -n:]           # prompt tuning prepends virtual positions; drop them
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        loss = F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum",
                               label_smoothing=self.label_smoothing)
        return LossOutput(loss, int(keep.sum()))
