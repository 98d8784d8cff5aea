"""Supervised next-token cross-entropy on trained tokens only (SFT, continued pretraining), with NEFTune."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE, collate, pack, tokenize_all
from ..generation import SHARED_PREFIX_MIN


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


def shared_prefix(batch: dict) -> int:
    """How many leading tokens every row of a right-padded batch shares without any loss on them
    (the first position with a loss, or where the rows differ, stays out so that its prediction is
    computed per row); 0 when that is under ``SHARED_PREFIX_MIN`` or the batch cannot share."""
    mask = batch.get("attention_mask")
    if mask is None:                             # packed rows (position_ids)
        return 0
    return rows_prefix(batch["input_ids"], mask, batch["labels"] != IGNORE)


def rows_prefix(ids: torch.Tensor, mask: torch.Tensor, trained: torch.Tensor | None = None) -> int:
    """Leading tokens every row of a right-padded batch shares, short of the first position where the rows
    differ or (``trained``) one has a loss, which stays per row (so does each row's last token); 0 under
    ``SHARED_PREFIX_MIN`` or for a single row."""
    if ids.shape[0] < 2:
        return 0
    shortest = int(mask.sum(dim=1).min())
    differs = (ids[:, :shortest] != ids[:1, :shortest]).any(dim=0)
    if trained is not None:
        differs |= trained[:, :shortest].any(dim=0)
    common = int(differs.nonzero()[0]) if bool(differs.any()) else shortest
    start = common - 1
    return start if start >= SHARED_PREFIX_MIN else 0


def prefix_forward(backbone, input_ids, attention_mask, start: int):
    """Hidden states of positions ``start:`` with the first ``start`` tokens (the same in every row)
    computed once and their keys/values repeated for each row; gradients flow through the shared part
    as if every row had computed it (the sum of the rows' gradients). None when the model returns no
    cache it can repeat."""
    rows = input_ids.shape[0]
    cache = backbone(input_ids=input_ids[:1, :start], use_cache=True).past_key_values
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None                   # an architecture without a repeatable cache: the caller runs every row
    cache.batch_repeat_interleave(rows)
    positions = torch.arange(start, input_ids.shape[1], device=input_ids.device).expand(rows, -1)
    return backbone(input_ids=input_ids[:, start:], attention_mask=attention_mask, past_key_values=cache,
                    position_ids=positions, use_cache=True).last_hidden_state


class SFTObjective:
    """Cross-entropy on the labelled tokens.

    Only hidden states at trained positions go through the output projection: with a
    49k-token vocabulary the full logits dominate time and memory, and prompt tokens
    (most of a chat example) have no loss anyway. A prompt that every row of a batch starts
    with (a long shared system prompt and instruction) runs once per batch, not once per row: the same loss
    and gradients without dropout; with dropout (LoRA's default 0.05) the rows share one dropout draw over
    that prefix instead of one each. Prompt-learning methods (soft prompts,
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
        if is_prompt_learning(model):
            return self._via_wrapper(model, batch)
        core = core_model(model)
        backbone, head = core.get_decoder(), core.get_output_embeddings()
        # NEFTune noises every row's embeddings separately; checkpointed layers keep no cache
        start = 0 if (self.neftune_alpha and model.training) or getattr(core, "is_activation_checkpointing", False) \
            else shared_prefix(batch)
        hidden = prefix_forward(backbone, batch["input_ids"], batch["attention_mask"], start) if start else None
        if hidden is None:
            start = 0
            inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
            hidden = backbone(**self._inputs(core, batch["input_ids"], model), **inputs,
                              use_cache=False).last_hidden_state
        targets = batch["labels"][:, start + 1:]
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
