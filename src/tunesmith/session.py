"""What the stages of one run share in one process: tokenizer, splits, tokenised sequences, method, objective."""
from __future__ import annotations

from . import methods, models, objectives
from .data.prepare import load_splits
from .errors import TunesmithError
from .rundir import Run, resolve_device


class Session:
    """Loaded once per process for a run; the stages (train, evaluate, export) take it and share it."""

    run: Run
    device: str
    splits: dict          # split name -> list[Example] (the run's data/ folder)
    manifest: dict        # data/manifest.json
    labels: list | None   # the task's label set (declared, or inferred from chat answers), else None
    method: object        # the Method plug-in
    objective: object     # the Objective
    base_model: object    # the untouched base model (None once a stage has consumed it)
    tokenizer: object
    seqs: dict            # split name -> tokenised items (the objective's build)
    token_stats: dict
    tuned_model: object = None       # the trained model while it is in memory
    prompt_builder: object = None    # few-shot / RAG prompts (built on first use)

    def __init__(self, run: Run):
        self.run = run
        r = run.recipe
        self.device = resolve_device(r.train.device)
        self.splits, self.manifest = load_splits(run.data_dir)
        self.labels = self.manifest.get("labels") or self.manifest.get("inferred_labels")
        self.method = methods.get(r.method.name)
        self.objective = objectives.from_recipe(r)
        if r.forgetting.replay and not self.objective.trains_on_text:
            raise TunesmithError(f"replay mixes plain text into training; objective {r.objective.name} cannot "
                                 "train on it (use objective sft)", field="forgetting.replay")
        self.base_model, self.tokenizer = models.load(r.model.name, device=self.device,
                                                      trust_remote_code=r.model.trust_remote_code)
        self.seqs, self.token_stats = self.objective.build(self.splits, self.tokenizer, r)
        from .eval.forgetting import replay_plan, replay_sequences
        plan = replay_plan(r)
        replay = replay_sequences(r, self.tokenizer, len(self.seqs["train"]), plan["share"])
        self.seqs["train"] = self.seqs["train"] + replay
        self.token_stats["replay"] = {**plan, "sequences": len(replay), "tokens": sum(t.length for t in replay)}
        if not self.seqs["train"]:
            raise TunesmithError("no training example has trainable tokens within data.max_length",
                                 field="data.max_length")

    def eval_examples(self):
        """The test examples evaluated (``eval.max_examples`` caps them: a seeded sample, see
        ``data.split.sample_indices``) and their tokenised items."""
        from .data.split import sample_in_order, sample_indices
        r = self.run.recipe
        n, seed = r.eval.max_examples, r.data.split.seed
        exs, seqs = self.splits["test"], self.seqs["test"]
        keep = sample_indices(len(exs), n, seed)
        # items align with examples unless the objective made none for some (they then only give the loss)
        return [exs[i] for i in keep], [seqs[i] for i in keep] if len(seqs) == len(exs) else \
            sample_in_order(seqs, n, seed)

    def calibration(self):
        """``f(model) -> loss`` on one training batch (for methods that choose what to train from data)."""
        from .tuned import calibration
        return calibration(self.objective, self.seqs["train"][: self.run.recipe.train.batch_size],
                           self.tokenizer.pad_token_id)

    def load_tuned(self):
        """The trained model: the one in memory, else the run's saved adapter/weights on a fresh base."""
        if self.tuned_model is not None:
            return self.tuned_model
        from .tuned import load_tuned
        model, _ = load_tuned(self.run, self.device, tokenizer=self.tokenizer, objective=self.objective)
        return model


__all__ = ["Session"]
