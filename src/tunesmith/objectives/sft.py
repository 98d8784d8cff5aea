"""Supervised next-token cross-entropy on trained (unmasked) tokens only, projecting just those positions."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE


@dataclass
class LossOutput:
    loss_sum: torch.Tensor   # summed token loss (divide by the step's token count)
    count: int               # number of tokens the loss covers


def core_model(model):
    """The Hugging Face model under a peft wrapper (peft injects its layers in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SFTObjective:
    """Cross-entropy on the labelled tokens.

    Only hidden states at trained positions go through the output projection: with a
    49k-token vocabulary the full logits dominate time and memory, and prompt tokens
    (most of a chat example) have no loss anyway.
    """

    name = "sft"

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, model, batch: dict) -> LossOutput:
        core = core_model(model)
        backbone, head = core.get_decoder(), core.get_output_embeddings()
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        hidden = backbone(**inputs, use_cache=False).last_hidden_state
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        logits = head(hidden[:, :-1][keep]).float()
        loss = F.cross_entropy(logits, targets[keep], reduction="sum",
                               label_smoothing=self.label_smoothing)
        return LossOutput(loss, int(keep.sum()))
