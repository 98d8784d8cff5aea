"""Checkpoint selection on the task metric: the loop keeps the best-scoring validation, ties go to validation
loss, early stopping counts on the same choice; the pipeline scores a validation sample where the task has a
metric, says so in train.json and the report, and refuses `task_metric` where it cannot apply."""
from __future__ import annotations

import json

import pytest
import torch

from test_loop import cfg, data, lora_model  # noqa: F401  (data is a fixture)
from tunesmith import pipeline
from tunesmith.errors import TunesmithError
from tunesmith.methods.base import trainable_state
from tunesmith.objectives.sft import SFTObjective
from tunesmith.train.loop import train


def right(k: int, n: int = 10) -> list[float]:
    """Per-example scores of a validation sample of ``n`` answers with the first ``k`` right."""
    return [1.0] * k + [0.0] * (n - k)


class Scripted:
    """A task scorer that answers with scripted per-example scores per validation and keeps the weights it saw."""
    metric = "accuracy"

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def describe(self):
        return "accuracy on 10 scripted answers"

    def __call__(self, model):
        self.seen.append({k: v.clone() for k, v in trainable_state(model).items()})
        return self.scores[len(self.seen) - 1]


def test_the_clearly_best_scoring_validation_is_kept_not_the_lowest_loss(tokenizer, data, tmp_path):  # noqa: F811
    train_seqs, val = data
    plain = train(lora_model(tokenizer), train_seqs, val, SFTObjective(), cfg(), tmp_path / "plain",
                  pad_id=tokenizer.pad_token_id)
    assert plain.best_step == 30 and plain.selected_on == "val_loss"     # the loss falls to the end here

    scorer = Scripted([right(2), right(9), right(5), right(5), right(1), right(3)])   # steps 5, 10, ..., 30
    model = lora_model(tokenizer)
    res = train(model, train_seqs, val, SFTObjective(), cfg(), tmp_path / "scored", pad_id=tokenizer.pad_token_id,
                task_score=scorer)
    assert res.steps == 30 and res.best_step == 10 and res.best_score == 0.9
    assert res.selected_on == "accuracy on 10 scripted answers"
    kept, at_step_10 = trainable_state(model), scorer.seen[1]
    assert all(torch.equal(kept[k], at_step_10[k]) for k in kept)
    evals = [json.loads(line) for line in (tmp_path / "scored" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert [e["task_metric"] for e in evals] == pytest.approx([0.2, 0.9, 0.5, 0.5, 0.1, 0.3])
    assert {e["task_metric_name"] for e in evals} == {"accuracy"}


def test_differences_within_the_samples_noise_fall_back_to_validation_loss(tokenizer, data, tmp_path):  # noqa: F811
    train_seqs, val = data
    res = train(lora_model(tokenizer), train_seqs, val, SFTObjective(), cfg(), tmp_path / "equal",
                pad_id=tokenizer.pad_token_id, task_score=Scripted([right(5)] * 6))
    assert res.best_step == 30 and res.best_score == 0.5
    # one answer more or less right out of ten is within one standard error: the falling loss decides
    res = train(lora_model(tokenizer), train_seqs, val, SFTObjective(), cfg(), tmp_path / "noise",
                pad_id=tokenizer.pad_token_id, task_score=Scripted([right(6), right(5), right(6), right(5),
                                                                    right(4), right(5)]))
    assert res.best_step == 30 and res.best_score == 0.5


def test_small_drops_within_the_noise_cannot_add_up(tokenizer, data, tmp_path):  # noqa: F811
    """9 right, then 8 (within the noise of 9: the falling loss keeps step 10), then 7 at every later validation:
    within the noise of the kept 8 but clearly below the best-scoring 9, so step 10 stays."""
    train_seqs, val = data
    res = train(lora_model(tokenizer), train_seqs, val, SFTObjective(), cfg(), tmp_path,
                pad_id=tokenizer.pad_token_id, task_score=Scripted([right(9), right(8)] + [right(7)] * 4))
    assert res.best_step == 10 and res.best_score == 0.8


def test_early_stopping_counts_validations_without_a_better_score(tokenizer, data, tmp_path):  # noqa: F811
    train_seqs, val = data
    res = train(lora_model(tokenizer), train_seqs, val, SFTObjective(), cfg(early_stopping_patience=2), tmp_path,
                pad_id=tokenizer.pad_token_id, task_score=Scripted([right(5), right(9), right(3), right(2),
                                                                    right(10), right(10)]))
    assert res.early_stopped and res.steps == 20 and res.best_step == 10


def test_a_label_task_is_selected_on_accuracy_and_the_report_says_so(recipe_file):
    run, result = pipeline.train(recipe_file(data={"split": {"validation": 0.2, "test": 0.1}},
                                             train={"epochs": 2, "eval_every": 4}))
    info = run.load_json("train.json")
    n_val = run.load_json("data/manifest.json")["counts"]["validation"]
    assert info["selected_on"] == f"accuracy on {min(32, n_val)} validation examples"
    assert 0.0 <= info["best_score"] <= 1.0 and result.best_score == info["best_score"]
    evals = [r for r in run.metrics() if r.get("type") == "eval"]
    assert evals and all(0.0 <= r["task_metric"] <= 1.0 and r["task_metric_name"] == "accuracy" for r in evals)
    assert [r["task_metric"] for r in evals if r["step"] == info["best_step"]] == [info["best_score"]]
    pipeline.evaluate(run)
    report = (run.path / "report.md").read_text()
    assert f"step {info['best_step']} (best accuracy on" in report


def test_val_loss_selection_scores_nothing(recipe_file):
    run, result = pipeline.train(recipe_file(data={"split": {"validation": 0.2, "test": 0.1}},
                                             train={"epochs": 1, "eval_every": 4, "select_on": "val_loss"}))
    assert result.selected_on == "val_loss" and result.best_score is None
    assert not any("task_metric" in r for r in run.metrics() if r.get("type") == "eval")


def test_task_metric_where_it_cannot_apply_is_one_clear_error(recipe_file, tmp_path):
    text = tmp_path / "notes.jsonl"
    text.write_text("".join(json.dumps({"text": f"plain domain text line {i} about invoices and parcels"}) + "\n"
                            for i in range(60)))
    recipe = recipe_file(task="pretraining", data={"train": str(text), "format": "text", "labels": None},
                         train={"max_steps": 2, "select_on": "task_metric"})
    with pytest.raises(TunesmithError, match="train.select_on task_metric cannot apply: task pretraining"):
        pipeline.train(recipe)
    auto = recipe_file(task="pretraining", data={"train": str(text), "format": "text", "labels": None},
                       train={"max_steps": 2})
    _, result = pipeline.train(auto)
    assert result.selected_on == "val_loss"


def test_samples_of_a_label_sorted_file_hold_every_label(recipe_file, tmp_path):
    """A file sorted by label keeps its order within each split; the selection sample, a capped evaluation and the
    baselines' sample are seeded samples across the split, not its head (which would hold one label)."""
    from tiny import sentiment_rows
    from tunesmith.eval.select import task_score
    from tunesmith.eval.stage import baseline_tests
    from tunesmith.session import Session
    rows = sorted(sentiment_rows(160), key=lambda r: r["label"])          # every negative first
    data = tmp_path / "sorted.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = pipeline.prepare(recipe_file(data={"train": str(data), "split": {"validation": 0.3, "test": 0.3}},
                                       train={"select_examples": 12}, eval={"max_examples": 12,
                                                                            "baseline_examples": 8}))
    session = Session(run)
    validation, test = session.splits["validation"], session.splits["test"]
    assert [ex.reference for ex in validation[:12]] == ["negative"] * 12      # the head: one label
    scorer = task_score(session)
    assert scorer.n == 12 and set(scorer.references) == {"negative", "positive"}
    order = [ex.prompt_messages for ex in validation]
    positions = [order.index(p) for p in scorer.prompts]
    assert positions == sorted(positions)                                   # kept in the split's order
    assert task_score(Session(run)).prompts == scorer.prompts               # seeded: the same sample again
    exs, seqs = session.eval_examples()
    assert len(exs) == len(seqs) == 12 and {ex.reference for ex in exs} == {"negative", "positive"}
    assert [s.input_ids for s in seqs] == [session.seqs["test"][test.index(ex)].input_ids for ex in exs]
    base = baseline_tests(session)
    assert len(base) == 8 and {ex.reference for ex in base} == {"negative", "positive"}
