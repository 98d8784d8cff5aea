"""Preference tuning on chosen/rejected pairs: DPO (against reference log-probs) and ORPO (reference-free)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..data.example import Example
from ..data.tokenize import IGNORE, Tokenized, batches, collate, tokenize_example
from ..errors import TunesmithError
from .sft import LossOutput, core_model, is_prompt_learning


@dataclass
class PreferencePair:
    """One tokenised pair: the prompt with the chosen reply and with the rejected reply.

    ``ref_chosen``/``ref_rejected`` are the reference model's summed log-probabilities of each
    reply (DPO fills them in ``before_training``); ``example`` is the pair's source example.
    """

    chosen: Tokenized
    rejected: Tokenized
    example: Example | None = None
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    @property
    def length(self) -> int:
        return self.chosen.length + self.rejected.length


def pair_examples(ex: Example) -> tuple[Example, Example]:
    """Chat examples prompt+chosen and prompt+rejected; only the final reply is trained."""
    if ex.rejected is None or not ex.messages or ex.messages[-1]["role"] != "assistant":
        raise TunesmithError("preference objectives need preference data (prompt, chosen and rejected "
                             "replies); set data.format to preference or give chosen/rejected fields",
                             file=ex.source or None, line=ex.line or None, field="objective.name")
    prompt = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in ex.messages[:-1]]
    chosen = [*prompt, {"role": "assistant", "content": ex.messages[-1]["content"]}]
    rejected = [*prompt, {"role": "assistant", "content": ex.rejected}]
    return replace(ex, messages=chosen, rejected=None), replace(ex, messages=rejected, rejected=None)


def _tokenize(ex: Example, tokenizer, max_length: int) -> tuple[Tokenized | None, bool]:
    """(sequence truncated to ``max_length`` or None when no trained token is left, truncated?)."""
    t = tokenize_example(ex, tokenizer, max_length)
    return t, bool(t and t.truncated)


def build_pairs(examples: list[Example], tokenizer, max_length: int) -> tuple[list[PreferencePair], dict]:
    """Tokenise every example's chosen and rejected conversation; drop pairs left without targets."""
    kept, truncated, dropped = [], 0, 0
    for ex in examples:
        (c, c_cut), (r, r_cut) = (_tokenize(e, tokenizer, max_length) for e in pair_examples(ex))
        if c is None or r is None:
            dropped += 1
            continue
        truncated += c_cut or r_cut
        kept.append(PreferencePair(c, r, ex))
    return kept, {"examples": len(examples), "kept": len(kept), "truncated": truncated,
                  "dropped_no_trained_tokens": dropped, "tokens": sum(p.length for p in kept),
                  "trained_tokens": sum(p.chosen.n_trained + p.rejected.n_trained for p in kept)}


def collate_pairs(items: list[PreferencePair], pad_id: int) -> dict:
    """One batch of 2B rows, chosen replies first; ``n_loss`` is the number of pairs."""
    batch = collate([p.chosen for p in items] + [p.rejected for p in items], pad_id)
    batch["n_loss"] = len(items)
    if all(p.ref_chosen is not None and p.ref_rejected is not None for p in items):
        batch["ref_chosen"] = torch.tensor([p.ref_chosen for p in items], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([p.ref_rejected for p in items], dtype=torch.float32)
    return batch


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's target tokens, and the number of target tokens.

    Like the SFT objective, only target positions go through the output layer; peft
    prompt-learning models run through their wrapper, which prepends the virtual tokens.
    """
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if is_prompt_learning(model):
        logits = model(**inputs, use_cache=False).logits
        logits = logits[:, -batch["input_ids"].shape[1]:][:, :-1][keep]
    else:
        core = core_model(model)
        hidden = core.get_decoder()(**inputs, use_cache=False).last_hidden_state
        logits = core.get_output_embeddings()(hidden[:, :-1][keep])
    logits = logits.float()
    token_logp = logits.gather(-1, targets[keep][:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    rows = keep.nonzero(as_tuple=True)[0]
    sums = torch.zeros(keep.shape[0], dtype=token_logp.dtype, device=token_logp.device)
    return sums.index_add(0, rows, token_logp), keep.sum(1)


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss -logsigmoid(beta * ((pc - ref_c) - (pr - ref_r))) and the implicit rewards
    beta * (logp - ref) of the chosen and rejected replies (summed log-probs in, per pair out)."""
    reward_c, reward_r = beta * (pc - ref_c), beta * (pr - ref_r)
    return -F.logsigmoid(reward_c - reward_r), reward_c.detach(), reward_r.detach()


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of p = exp(mean_logp), stable for p near 0 and near 1."""
    x = mean_logp.clamp(max=-1e-7)
    log1mexp = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return x - log1mexp


def orpo_loss(pc: torch.Tensor, pr: torch.Tensor, nc: torch.Tensor, nr: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair ORPO loss: NLL of the chosen reply (mean over its tokens) plus beta times
    -logsigmoid of the log odds ratio of the length-normalised log-probs (Hong et al., 2024).

    Returns (loss, chosen NLL, log odds ratio) per pair."""
    mean_c, mean_r = pc / nc.clamp(min=1), pr / nr.clamp(min=1)
    ratio = log_odds(mean_c) - log_odds(mean_r)
    nll = -mean_c
    return nll - beta * F.logsigmoid(ratio), nll.detach(), ratio.detach()


class _PreferenceObjective:
    """Data, batching and evaluation shared by DPO and ORPO; subclasses define the loss."""

    name = "preference"
    generates_text = True       # the tuned model answers in text (else it predicts with its own head)
    compares_baselines = False   # judged against zero-shot / few-shot / RAG on the task metric
    trains_on_text = False       # plain text can be mixed into its training (forgetting.replay)
    own_model = False            # the tuned model is a new model (not the recipe's base plus the method)
    mergeable = True

    def __init__(self, beta: float = 0.1, max_length: int = 512, batch_size: int = 8):
        self.beta, self.max_length, self.batch_size = beta, max_length, batch_size
        self.pad_id = 0     # replaced by the tokenizer's in build(); masked positions never matter

    @classmethod
    def from_recipe(cls, recipe):
        return cls(beta=recipe.objective.beta, max_length=recipe.data.max_length,
                   batch_size=recipe.train.batch_size)

    # ---- data ----------------------------------------------------------------------------------
    def build(self, splits: dict, tokenizer, recipe) -> tuple[dict, dict]:
        if recipe.data.packing:
            raise TunesmithError(f"packing is not supported by the {self.name} objective (pairs are "
                                 "batched together); set data.packing to false", field="data.packing")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        items, stats = {}, {}
        for name, examples in splits.items():
            items[name], stats[name] = build_pairs(examples, tokenizer, recipe.data.max_length)
        return items, stats

    collate = staticmethod(collate_pairs)

    # ---- scoring -------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, model, items: list[PreferencePair], batch_size: int | None = None) -> torch.Tensor:
        """[pairs, 4] float64 on CPU: summed logp chosen, summed logp rejected, their token counts."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = torch.zeros((len(items), 4), dtype=torch.float64)
        try:
            for idx in batches(items, batch_size or self.batch_size, seed=0, shuffle=False):
                batch = collate_pairs([items[i] for i in idx], self.pad_id)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                sums, counts = sequence_logps(model, batch)
                b = len(idx)
                out[idx] = torch.stack([sums[:b], sums[b:], counts[:b], counts[b:]], 1).double().cpu()
        finally:
            model.train(was_training)
        return out

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, model, tokenizer, examples, items: list[PreferencePair], recipe,
                 which: str = "tuned") -> dict:
        """Held-out preference metrics of ``model`` (``which``: "base" or "tuned").

        ``logp_preference_accuracy``: share of pairs whose chosen reply has the higher
        length-normalised log-prob (ORPO's implicit reward; the only meaningful preference of an
        untuned model); ``logp_margin``: mean difference of those per-token log-probs;
        ``chosen_logp``/``rejected_logp``: mean summed log-prob of each reply. Predictions say per
        pair which reply the model prefers (``prediction``) next to the chosen one (``reference``).
        """
        if not items:
            return {"metrics": {}, "predictions": [], "loss": {}}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        s = self.score(model, items, recipe.eval.batch_size)
        mean_c, mean_r = s[:, 0] / s[:, 2].clamp(min=1), s[:, 1] / s[:, 3].clamp(min=1)
        correct = mean_c > mean_r
        metrics = {"logp_preference_accuracy": float(correct.double().mean()),
                   "logp_margin": float((mean_c - mean_r).mean()),
                   "chosen_logp": float(s[:, 0].mean()), "rejected_logp": float(s[:, 1].mean())}
        margins = self._reward_margins(model, items, recipe, s) if which != "base" else None
        if margins is not None:
            metrics["reward_accuracy"] = float((margins > 0).double().mean())
            metrics["reward_margin"] = float(margins.mean())
        predictions = []
        for i, p in enumerate(items):
            ex = p.example
            chosen = ex.messages[-1]["content"] if ex else None
            rejected = ex.rejected if ex else None
            row = {"prompt": ex.prompt_messages if ex else [], "chosen": chosen, "rejected": rejected,
                   "chosen_logp": float(s[i, 0]), "rejected_logp": float(s[i, 1]),
                   "correct": bool(correct[i]),
                   "reference": chosen, "prediction": chosen if correct[i] else rejected}
            if margins is not None:
                row["reward_margin"] = float(margins[i])
            predictions.append(row)
        return {"metrics": metrics, "predictions": predictions, "loss": {}}

    def _reward_margins(self, model, items, recipe, scores: torch.Tensor) -> torch.Tensor | None:
        """Per-pair implicit reward margin of a tuned model; None when the objective has none
        beyond the length-normalised log-prob difference already reported."""
        return None


class DPOObjective(_PreferenceObjective):
    """Direct Preference Optimisation (Rafailov et al., 2023) against the untouched model.

    The reference log-probs are computed once, before the method is applied, and stored on the
    items; the loss is the summed -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) over pairs.
    """

    name = "dpo"

    def before_training(self, model, items_by_split: dict) -> None:
        """Store the reference (untouched model's) summed log-probs on every item of every split."""
        for items in items_by_split.values():
            self._fill_references(model, items)

    def _fill_references(self, model, items: list[PreferencePair], batch_size: int | None = None) -> None:
        if not items:
            return
        s = self.score(model, items, batch_size)
        for p, row in zip(items, s.tolist()):
            p.ref_chosen, p.ref_rejected = row[0], row[1]

    def __call__(self, model, batch: dict) -> LossOutput:
        if "ref_chosen" not in batch:
            raise RuntimeError("DPO batches need reference log-probs: call before_training() first")
        sums, _ = sequence_logps(model, batch)
        b = batch["n_loss"]
        losses, reward_c, reward_r = dpo_loss(sums[:b], sums[b:], batch["ref_chosen"].to(sums.device),
                                              batch["ref_rejected"].to(sums.device), self.beta)
        return LossOutput(losses.sum(), b, {"reward_accuracy": float((reward_c > reward_r).sum()),
                                            "reward_margin": float((reward_c - reward_r).sum())})

    def _reward_margins(self, model, items, recipe, scores):
        missing = [p for p in items if p.ref_chosen is None or p.ref_rejected is None]
        if missing:
            self._references_for(model, missing, recipe)
        ref = torch.tensor([[p.ref_chosen, p.ref_rejected] for p in items], dtype=torch.float64)
        return self.beta * ((scores[:, 0] - ref[:, 0]) - (scores[:, 1] - ref[:, 1]))

    def _references_for(self, model, items, recipe) -> None:
        """Reference log-probs when evaluating in a new process: the peft model with its adapter
        disabled, or else a freshly loaded base model."""
        disable = getattr(model, "disable_adapter", None)
        if callable(disable):
            with disable():
                self._fill_references(model, items, recipe.eval.batch_size)
            return
        from .. import models
        device = next(model.parameters()).device
        base, _ = models.load(recipe.model.name, device=str(device),
                              trust_remote_code=recipe.model.trust_remote_code)
        self._fill_references(base, items, recipe.eval.batch_size)
        del base


class ORPOObjective(_PreferenceObjective):
    """Odds Ratio Preference Optimisation (Hong et al., 2024): SFT on the chosen reply plus an
    odds-ratio penalty on the rejected one; no reference model. Its implicit reward is the
    length-normalised log-prob, reported as ``logp_preference_accuracy``/``logp_margin``."""

    name = "orpo"

    def __call__(self, model, batch: dict) -> LossOutput:
        sums, counts = sequence_logps(model, batch)
        b = batch["n_loss"]
        losses, nll, ratio = orpo_loss(sums[:b], sums[b:], counts[:b], counts[b:], self.beta)
        margin = (sums[:b] / counts[:b].clamp(min=1) - sums[b:] / counts[b:].clamp(min=1)).detach()
        return LossOutput(losses.sum(), b, {"reward_accuracy": float((margin > 0).sum()),
                                            "reward_margin": float(margin.sum()), "nll": float(nll.sum()),
                                            "log_odds_ratio": float(ratio.sum())})


__all__ = ["PreferencePair", "DPOObjective", "ORPOObjective", "build_pairs", "collate_pairs",
           "sequence_logps", "dpo_loss", "orpo_loss", "log_odds", "pair_examples"]
