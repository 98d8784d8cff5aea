"""Sequence classification with a new linear head on a causal LM's last prompt token (feature extraction or LoRA)."""
from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.coverage import MAX_LABELS, infer_labels, label_of
from ..errors import TunesmithError
from .sft import LossOutput, core_model, is_prompt_learning, prefix_forward, rows_prefix

HEAD_NAME = "tunesmith_cls_head"
"""Attribute name of the head on the core transformers model (a plain submodule, no subclassing)."""

HEAD_FILE, HEAD_META = "cls_head.safetensors", "cls_head.json"

PROBE_C = 0.1
"""Inverse L2 strength of the linear probe's logistic regression (on standardized features)."""

PROBE_SHARE = 0.5
"""Under ``train.time_budget``, the share of the budget a head's starting probe may spend on features (evidence in
:meth:`ClassificationObjective.before_training`)."""

PROBE_CHUNK = 64
"""Items whose features are computed between two looks at the clock (sorted by length within a chunk)."""


def fit_linear(x, y: Sequence[int], n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A multinomial logistic regression on standardized ``x`` (scikit-learn, ``C = PROBE_C``) folded back into
    one linear map on the raw features: ``(weight (n_classes, hidden), bias (n_classes,))``, float32, with
    ``logits = x @ weight.T + bias``. A class absent from ``y`` gets zero weights and a bias 10 below the
    lowest other one; two classes give the pair of logits whose softmax is the regression's sigmoid."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    x = np.asarray(x, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    fit = LogisticRegression(max_iter=2000, C=PROBE_C).fit(scaler.transform(x), list(y))
    coef, icpt = fit.coef_, fit.intercept_
    if coef.shape[0] == 1:                                  # binary: one logit for classes_[1]
        coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    w = coef / scaler.scale_                                # (x - mean) / scale folded into w and b
    b = icpt - w @ scaler.mean_
    weight, bias = np.zeros((n_classes, x.shape[1])), np.full(n_classes, b.min() - 10.0)
    weight[fit.classes_], bias[fit.classes_] = w, b
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


def saved_labels(in_dir: Path) -> list[str]:
    """The label set of the head saved in ``in_dir`` (its ``cls_head.json``); one clear error when unreadable."""
    meta = Path(in_dir) / HEAD_META
    try:
        return list(json.loads(meta.read_text())["labels"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TunesmithError(f"no readable classification head metadata; expected {HEAD_META}",
                             file=str(meta)) from None


@dataclass
class ClsItem:
    """One classification example: the tokens of its prompt and the index of its label."""

    input_ids: list[int]
    label: int
    truncated: bool = False

    @property
    def length(self) -> int:
        return len(self.input_ids)


def hidden_size(model) -> int:
    """Width of the decoder's final hidden states."""
    core = core_model(model)
    cfg = core.config.get_text_config(decoder=True) if hasattr(core.config, "get_text_config") else core.config
    size = getattr(cfg, "hidden_size", None)
    return int(size) if size else int(core.get_input_embeddings().embedding_dim)


class ClassificationObjective:
    """Cross-entropy of a new ``nn.Linear(hidden, n_labels)`` head over last-token pooled states.

    The prompt (system/user turns rendered with the chat template and the assistant generation
    prompt) is left-truncated to ``data.max_length`` so its last token, where the model would
    start answering, is always kept; that token's final hidden state is the pooled feature.

    The head is a submodule of the core transformers model (``attach``), so every method wraps
    and checkpoints it like any other weight. Methods freeze what they do not train (freeze
    with ``top_k_layers=0`` freezes all blocks; peft LoRA freezes all non-LoRA weights), so
    ``after_method(model)`` must run after ``method.apply`` and before the optimizer is built to
    make the head trainable again; ``__call__`` warns once if it finds the head frozen in training.

    Reload: ``models.load`` -> ``attach`` -> ``method.load`` -> ``load_extra`` (the pipeline's order).

    With ``head_init="probe"`` (the default) the head does not start from noise: before the method is applied,
    ``before_training`` fits a logistic regression on the untouched model's features of up to
    ``probe_examples`` training examples (``fit_linear``) and starts the head there, so training begins at
    what a linear head on the frozen base already separates (a head started from noise at an adapter's
    learning rate can stay at the majority class for a whole short budget). A fitted start is validated before
    the first step and kept unless a training step beats it (``fitted_start``): training the adapter under the
    probe's head can undo the probe in a short budget (sentiment, 5 minutes: validation loss 0.59 at the probe,
    1.05 and 1.01 after 10 and 20 steps).
    """

    name = "classification"
    generates_text = False       # the tuned model answers in text (else it predicts with its own head)
    compares_baselines = True   # judged against zero-shot / few-shot / RAG on the task metric
    trains_on_text = False       # plain text can be mixed into its training (forgetting.replay)
    own_model = False            # the tuned model is a new model (not the recipe's base plus the method)
    mergeable = False   # transformers cannot load the head from a plain CausalLM directory

    def __init__(self, labels: Sequence[str] | None = None, *, data_cfg=None, seed: int = 0,
                 max_length: int = 512, head_init: str = "probe", probe_examples: int = 1024,
                 probe_budget_s: float | None = None, init_from: str | None = None):
        self.labels: list[str] | None = list(labels) if labels is not None else None
        self.data_cfg = data_cfg
        self.seed = seed
        self.max_length = max_length
        self.head_init = head_init
        self.probe_examples = probe_examples
        self.probe_budget_s = probe_budget_s     # seconds the probe's features may take (None: no limit)
        self.init_from = init_from               # a parent version's model folder: its head is the start
        self.head_start: dict | None = None      # how the head was initialised (before_training)
        self.fitted_start = False                # a probe or the parent's head: step 0 is a candidate to keep
        self._warned_frozen = False

    @classmethod
    def from_recipe(cls, recipe) -> "ClassificationObjective":
        from ..durations import parse_duration
        o, budget = recipe.objective, recipe.train.time_budget
        return cls(data_cfg=recipe.data, seed=recipe.train.seed, max_length=recipe.data.max_length,
                   head_init=getattr(o, "head_init", "probe"), probe_examples=getattr(o, "probe_examples", 1024),
                   probe_budget_s=PROBE_SHARE * parse_duration(budget) if budget is not None else None,
                   init_from=getattr(recipe.method, "init_from", None))

    # ---- data ----------------------------------------------------------------------------------
    def prompt_ids(self, tokenizer, messages: list[dict]) -> tuple[list[int], bool]:
        """Tokens of ``messages`` plus the generation prompt, left-truncated; and whether truncated."""
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return (ids[-self.max_length:], True) if len(ids) > self.max_length else (ids, False)

    def _messages(self, example) -> list[dict]:
        if example.messages:
            return example.prompt_messages
        return [{"role": "user", "content": example.text or ""}]

    @staticmethod
    def check_data(splits: dict) -> list[str]:
        """The label set of prepared ``splits`` (sorted, all splits): labelled data's labels, or the answers of chat
        data when they are a small set of short labels (``data.coverage.infer_labels``); raises otherwise (the
        pipeline calls it before the run folder is made)."""
        examples = [ex for exs in splits.values() for ex in exs]
        if not any(ex.label is not None for ex in examples) and infer_labels(examples) is None:
            answers = len({label_of(ex) for ex in examples})
            raise TunesmithError(
                f"the classification head needs a label per example: data.format: labelled, or chat data whose "
                f"answers are 2 to {MAX_LABELS} short one-line labels; these answers are not ({answers} distinct). "
                "For answers in text set objective.name: sft", field="objective.name")
        found = sorted({label for label in map(label_of, examples) if label is not None})
        if len(found) < 2:
            raise TunesmithError(f"classification needs labelled data with at least two labels; found "
                                 f"{found or 'none'}", field="objective.name")
        return found

    def build(self, splits: dict, tokenizer, recipe) -> tuple[dict, dict]:
        """Label set = sorted labels of all splits (the held-out splits only use training labels), or the labels
        of a head already known (``load_meta``: scoring a version on another version's suite); an example whose
        label that head lacks has no item (counted in the stats; ``evaluate`` still scores it, as a miss)."""
        self.max_length = recipe.data.max_length
        self.data_cfg = recipe.data
        found = self.check_data(splits)
        self.labels = self.labels if self.labels is not None else found
        index = {label: i for i, label in enumerate(self.labels)}
        items, stats = {}, {}
        for name, examples in splits.items():
            kept: list[ClsItem] = []
            unknown = 0
            for ex in examples:
                label = label_of(ex)
                if label is None or label not in index:
                    unknown += label is not None
                    continue
                ids, cut = self.prompt_ids(tokenizer, self._messages(ex))
                kept.append(ClsItem(ids, index[label], cut))
            items[name] = kept
            stats[name] = {"examples": len(examples), "kept": len(kept),
                           "truncated": sum(i.truncated for i in kept),
                           "dropped_no_label": len(examples) - len(kept) - unknown,
                           "dropped_label_unknown_to_head": unknown,
                           "tokens": sum(i.length for i in kept), "trained_tokens": len(kept)}
        return items, stats

    @staticmethod
    def collate(items: list[ClsItem], pad_id: int) -> dict:
        """Right-padded ``input_ids``/``attention_mask`` and the label indices; one loss unit per row."""
        width = max(i.length for i in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, item in enumerate(items):
            ids[r, :item.length] = torch.tensor(item.input_ids)
            mask[r, :item.length] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([i.label for i in items], dtype=torch.long),
                "n_tokens": sum(i.length for i in items), "n_loss": len(items)}

    # ---- architecture --------------------------------------------------------------------------
    def attach(self, model, tokenizer=None, recipe=None):
        """Add a fresh head (normal std 0.02, seeded; zero bias) to the core model, in place."""
        if self.labels is None:
            raise TunesmithError("the classification head needs its labels: build the data first",
                                 field="objective.name")
        core = core_model(model)
        seed = recipe.train.seed if recipe is not None else self.seed
        ref = next(core.parameters())
        head = torch.nn.Linear(hidden_size(core), len(self.labels))
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.02)
            head.bias.zero_()
        core.add_module(HEAD_NAME, head.to(device=ref.device, dtype=torch.float32))
        return model

    def features(self, model, items: Sequence[ClsItem], pad_id: int, batch_size: int = 8,
                 max_s: float | None = None) -> torch.Tensor:
        """``(n, hidden)`` float32: the head's input (``pooled``) for the first ``n`` items, in eval mode without
        gradients; ``n`` is all of them, or with ``max_s`` the items of the whole chunks of ``PROBE_CHUNK`` (at least
        one) that fit in that many seconds, judging the next chunk by the mean one so far. Within a chunk, batches group similar lengths and a
        shared system prompt runs once per batch."""
        out: list[torch.Tensor] = []
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                for lo in range(0, len(items), PROBE_CHUNK):
                    spent = time.perf_counter() - t0
                    if max_s is not None and out and spent + spent / len(out) > max_s:
                        break       # the next chunk (as long as the mean one so far) would pass max_s
                    chunk = list(range(lo, min(lo + PROBE_CHUNK, len(items))))
                    order = sorted(chunk, key=lambda i: items[i].length)
                    feats = torch.zeros((len(chunk), hidden_size(model)))
                    for start in range(0, len(order), batch_size):
                        rows = order[start:start + batch_size]
                        batch = self.collate([items[r] for r in rows], pad_id)
                        feats[[r - lo for r in rows]] = self.pooled(
                            model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
                    out.append(feats)
        finally:
            model.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, hidden_size(model)))

    def before_training(self, model, items_by_split: dict) -> None:
        """Start the head from a linear probe of the untouched model (``head_init: probe``): features of up to
        ``probe_examples`` training items (seeded sample; under a time budget, those done within
        ``PROBE_SHARE`` of it), a logistic regression (``fit_linear``), its weights copied into the head. Kept
        random when the sample has under 8 items or one label.

        Evidence for the defaults (the bench's 16-label router, 192 test items, probe alone, mean of 3 samples):
        128 examples 26.7%, 256 32.3%, 512 38.4%, 1024 39.4%, all 1,539 37.0%; ``C`` from 0.01 to 0.3 moves
        it by at most 3 points. A head started from the 256-example probe and trained with LoRA for 5 minutes
        scored 33.3%. Share of a 5-minute budget: spam (long e-mails, 100 test items) 30% -> 64 to 128 examples
        + 4 to 8 steps, 88-93%; 50% -> 256 examples + 5 steps, 98%. Router 30% -> 448 examples + 23 steps, 42.2%
        [35.4, 49.5]; 50% -> 768 + 16 steps, 37.5% [30.7, 44.8] (within each other's interval). A probe's
        forward-only pass covers about three times the examples per second that training steps do, hence
        half the budget."""
        from ..train.progress import console
        if self.init_from and (Path(self.init_from) / HEAD_FILE).is_file():
            self.start_from_parent(model, Path(self.init_from))
            return
        if self.head_init != "probe":
            return
        train = list(items_by_split.get("train") or [])
        train = random.Random(self.seed).sample(train, min(len(train), self.probe_examples))   # shuffled: a
        # budget-cut probe keeps a random part, not the head of a file sorted by label
        if len(train) < 8 or len({i.label for i in train}) < 2:
            console.print(f"[yellow]classification head: {len(train)} training items with "
                          f"{len({i.label for i in train})} label(s) are too few for a probe; the head starts "
                          "from small random weights[/yellow]")
            return
        t0 = time.perf_counter()
        wanted = len(train)
        x = self.features(model, train, pad_id=0, max_s=self.probe_budget_s)   # right padding is masked
        train = train[:len(x)]
        if len({i.label for i in train}) < 2:
            console.print("[yellow]classification head: the time budget's share for a probe covered one label "
                          "only; the head starts from small random weights[/yellow]")
            return
        weight, bias = fit_linear(x.numpy(), [i.label for i in train], len(self.labels))
        head = self.head(model)
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight.device))
            head.bias.copy_(bias.to(head.bias.device))
            fitted = float(((x @ weight.T + bias).argmax(-1) == torch.tensor([i.label for i in train]))
                           .float().mean())
        self.fitted_start = True
        self.head_start = {"init": "probe", "examples": len(train), "sampled": wanted, "train_accuracy": fitted,
                           "wall_s": round(time.perf_counter() - t0, 2)}
        cut = (f" of {wanted} sampled (the time budget's {PROBE_SHARE:.0%} share ran out)"
               if len(train) < wanted else "")
        console.print(f"classification head starts from a linear probe of the base model: {len(train)} training "
                      f"examples{cut}, training accuracy {100 * fitted:.1f}%, {self.head_start['wall_s']:.0f}s")

    def start_from_parent(self, model, parent_dir: Path) -> None:
        """A continued version (``method.init_from``, set by ``tunesmith continue``) starts from its parent's head:
        the parent's row for every label both know; a label the parent lacks starts with zero weights and the
        mean of the parent's biases (no preference until trained)."""
        from ..methods.base import load_tensors
        from ..train.progress import console
        parent_labels = saved_labels(parent_dir)
        state = load_tensors(parent_dir / HEAD_FILE)
        head = self.head(model)
        if tuple(state["weight"].shape) != (len(parent_labels), head.in_features):
            raise TunesmithError(f"the parent's head has shape {tuple(state['weight'].shape)}, this model needs "
                                 f"({len(parent_labels)}, {head.in_features})", file=str(parent_dir / HEAD_FILE))
        row = {label: i for i, label in enumerate(parent_labels)}
        new = [label for label in self.labels if label not in row]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(float(state["bias"].float().mean()))
            for i, label in enumerate(self.labels):
                if label in row:
                    head.weight[i] = state["weight"][row[label]].to(head.weight)
                    head.bias[i] = state["bias"][row[label]].to(head.bias)
        self.fitted_start = True
        self.head_start = {"init": "parent", "kept": len(self.labels) - len(new), "new": new}
        console.print(f"classification head starts from the parent's head: {self.head_start['kept']} of "
                      f"{len(self.labels)} labels" + (f"; new: {', '.join(new)}" if new else ""))

    def training_notes(self) -> dict[str, str]:
        """How the head started (for ``train.json`` and the report)."""
        h = self.head_start
        if h is None:
            return {"head start": "small random weights (seeded)"}
        if h["init"] == "parent":
            return {"head start": f"the parent version's head ({h['kept']} of {h['kept'] + len(h['new'])} labels"
                                  + (f"; new, from zero: {', '.join(h['new'])})" if h["new"] else ")")}
        cut = f" of {h['sampled']} sampled, the time budget's share ran out" if h["examples"] < h["sampled"] else ""
        return {"head start": f"linear probe of the base on {h['examples']} training examples ({h['wall_s']:.0f}s"
                              f"{cut}; training accuracy {100 * h['train_accuracy']:.1f}%)"}

    def after_method(self, model):
        """Make the head trainable again after the method froze the rest (see the class docs).

        The LM output projection is never used by this objective, so it is frozen too (no
        optimizer state, honest trainable counts) unless it is tied to the input embeddings.
        """
        core = core_model(model)
        out, inp = core.get_output_embeddings(), core.get_input_embeddings()
        if out is not None and inp is not None and out.weight is not inp.weight:
            out.requires_grad_(False)
        self.head(model).requires_grad_(True)
        return model

    def head(self, model) -> torch.nn.Linear:
        head = getattr(core_model(model), HEAD_NAME, None)
        if head is None:
            raise TunesmithError("the model has no classification head; call attach() or load_extra() first",
                                 field="objective.name")
        return head

    # ---- loss ----------------------------------------------------------------------------------
    def logits(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head logits (float32) at the last non-pad token of each right-padded row."""
        pooled = self.pooled(model, input_ids, attention_mask)
        head = self.head(model)
        return head(pooled.to(head.weight.dtype)).float()

    @staticmethod
    def pooled(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The feature the head reads: the final hidden state at the last non-pad token of each right-padded row.

        A prompt prefix every row shares (a long system prompt listing the labels) runs once, its keys/values
        repeated for the rows (``sft.prefix_forward``; gradients as if each row had computed it)."""
        n = input_ids.shape[1]
        last = attention_mask.sum(dim=1) - 1
        start = 0
        if is_prompt_learning(model):    # the peft wrapper prepends virtual tokens / prefixes itself
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                        use_cache=False)
            hidden = out.hidden_states[-1][:, -n:]
        else:
            core = core_model(model)
            backbone = core.get_decoder()
            start = 0 if getattr(core, "is_activation_checkpointing", False) else rows_prefix(
                input_ids, attention_mask)
            hidden = prefix_forward(backbone, input_ids, attention_mask, start) if start else None
            if hidden is None:
                start = 0
                hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                                  use_cache=False).last_hidden_state
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last - start]

    def __call__(self, model, batch: dict) -> LossOutput:
        head = self.head(model)
        if model.training and torch.is_grad_enabled() and not head.weight.requires_grad \
                and not self._warned_frozen:
            self._warned_frozen = True
            warnings.warn("the classification head is frozen while training: run "
                          "objective.after_method(model) after the method is applied", RuntimeWarning,
                          stacklevel=2)
        logits = self.logits(model, batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels, reduction="sum")
        correct = int((logits.argmax(dim=-1) == labels).sum())
        return LossOutput(loss, int(labels.shape[0]), {"correct": correct})

    # ---- weights -------------------------------------------------------------------------------
    def save_extra(self, model, out_dir: Path) -> None:
        """Write ``cls_head.safetensors`` and ``cls_head.json`` (labels, hidden size)."""
        from ..fsutil import atomic_write_json
        from ..methods.base import save_tensors
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        head = self.head(model)
        save_tensors({"weight": head.weight, "bias": head.bias}, out_dir / HEAD_FILE, {"objective": self.name})
        atomic_write_json(out_dir / HEAD_META, {"labels": self.labels, "hidden_size": head.in_features,
                                                "pooling": "last_token", "max_length": self.max_length})

    def load_meta(self, in_dir: Path) -> None:
        """Learn the saved head's label set (so ``attach`` can build it before the weights load)."""
        self.labels = saved_labels(in_dir)

    def load_extra(self, model, in_dir: Path):
        """Attach (if needed) and load the saved head, checking labels and shapes."""
        from ..methods.base import load_tensors
        in_dir = Path(in_dir)
        meta_path, weights_path = in_dir / HEAD_META, in_dir / HEAD_FILE
        if not (meta_path.is_file() and weights_path.is_file()):
            raise TunesmithError(f"no classification head here; expected {HEAD_FILE} and {HEAD_META}",
                                 file=str(in_dir))
        meta = json.loads(meta_path.read_text())
        labels, width = list(meta["labels"]), int(meta["hidden_size"])
        state = load_tensors(weights_path)
        problem = None
        if self.labels is not None and self.labels != labels:
            problem = f"saved labels {labels} differ from the data's labels {self.labels}"
        elif width != hidden_size(model):
            problem = f"saved head expects hidden size {width}, the model has {hidden_size(model)}"
        elif tuple(state["weight"].shape) != (len(labels), width) or tuple(state["bias"].shape) != (len(labels),):
            problem = f"saved head has shape {tuple(state['weight'].shape)}, expected {(len(labels), width)}"
        if problem:
            raise TunesmithError(f"cannot load the classification head: {problem}", file=str(weights_path))
        self.labels = labels
        self.max_length = int(meta.get("max_length", self.max_length))
        core = core_model(model)
        existing = getattr(core, HEAD_NAME, None)
        if existing is None or tuple(existing.weight.shape) != (len(labels), width):
            self.attach(model)
        head = self.head(model)
        with torch.no_grad():
            head.weight.copy_(state["weight"])
            head.bias.copy_(state["bias"])
        return model

    # ---- inference -----------------------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, model, tokenizer, prompts: list[list[dict]], batch_size: int = 16,
                      targets: list[int] | None = None) -> tuple[torch.Tensor, float]:
        """Softmax over the labels for each chat prompt (input order), and the summed loss on ``targets``."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        items = [ClsItem(self.prompt_ids(tokenizer, p)[0], targets[i] if targets else 0)
                 for i, p in enumerate(prompts)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out, loss = [], 0.0
        try:
            for start in range(0, len(items), batch_size):
                batch = self.collate(items[start:start + batch_size], pad)
                logits = self.logits(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                out.append(logits.softmax(dim=-1).cpu())
                loss += float(F.cross_entropy(logits, batch["labels"].to(device), reduction="sum"))
        finally:
            model.train(was_training)
        probs = torch.cat(out) if out else torch.zeros((0, len(self.labels or [])))
        return probs, loss

    @torch.inference_mode()
    def label_logprobs(self, model, prompt_ids: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
        """``(len(prompt_ids), n_labels)`` float32 log-probabilities of the labels for rendered prompts (token ids
        ending with the generation prompt; left-truncated to ``max_length`` as in training): what a server
        answers with."""
        device = next(model.parameters()).device
        items = [ClsItem(list(ids)[-self.max_length:], 0) for ids in prompt_ids]
        batch = self.collate(items, pad_id)
        logits = self.logits(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        return torch.log_softmax(logits, dim=-1).cpu()

    def _as_messages(self, x) -> list[dict]:
        if isinstance(x, str):
            if self.data_cfg is None:
                return [{"role": "user", "content": x}]
            from ..data.formats import labelled_prompt
            msgs = [{"role": "user", "content": labelled_prompt(self.data_cfg, x, self.labels or [])}]
            if self.data_cfg.system_prompt:
                msgs.insert(0, {"role": "system", "content": self.data_cfg.system_prompt})
            return msgs
        if hasattr(x, "prompt_messages"):
            return self._messages(x)
        return list(x)

    def predict(self, model, tokenizer, inputs: Sequence, batch_size: int = 16) -> list[dict]:
        """``[{"label", "probabilities": {label: p}}]`` for raw texts (wrapped in the recipe's labelled
        prompt when known), chat prompts (lists of messages) or ``Example``s."""
        probs, _ = self.probabilities(model, tokenizer, [self._as_messages(x) for x in inputs], batch_size)
        return [{"label": self.labels[int(row.argmax())],
                 "probabilities": {lb: float(p) for lb, p in zip(self.labels, row)}} for row in probs]

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, model, tokenizer, examples: list, items: list, recipe, which: str = "tuned") -> dict:
        """Tuned: the head's probabilities; base (no trained head): zero-shot answers by generation.

        Both sides score the same labelled test examples with accuracy and macro P/R/F1 and put
        the confusion matrix in ``label_details``.
        """
        from ..eval.metrics import label_metrics
        labelled = [ex for ex in examples if label_of(ex) is not None]
        prompts = [self._messages(ex) for ex in labelled]
        refs = [label_of(ex) for ex in labelled]
        result: dict = {"metrics": {}, "predictions": [], "label_details": None, "loss": {}}
        if not labelled:
            return result
        if which == "base":
            from ..generation import generate
            answers = generate(model, tokenizer, prompts, recipe.eval.max_new_tokens,
                               batch_size=recipe.eval.batch_size)
            preds = [{"prediction": a} for a in answers]
        else:
            index = {lb: i for i, lb in enumerate(self.labels)}
            known = all(r in index for r in refs)      # a reference the head lacks: scored as a miss, no loss
            probs, loss = self.probabilities(model, tokenizer, prompts, recipe.eval.batch_size,
                                             targets=[index[r] for r in refs] if known else None)
            result["loss"] = {"val_loss": loss / len(labelled)} if known else {}
            preds = [{"prediction": self.labels[int(row.argmax())],
                      "probabilities": {lb: float(p) for lb, p in zip(self.labels, row)}} for row in probs]
        extra = sorted(set(refs) - set(self.labels))    # references a head lacks (another version's suite)
        details = label_metrics([p["prediction"] for p in preds], refs, self.labels + extra)
        result["metrics"] = {k: details[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
        result["label_details"] = details
        result["predictions"] = [{"prompt": ex.prompt_messages or prompt, "reference": ref, **pred}
                                 for ex, prompt, ref, pred in zip(labelled, prompts, refs, preds)]
        return result


__all__ = ["ClassificationObjective", "ClsItem", "HEAD_NAME", "hidden_size"]
