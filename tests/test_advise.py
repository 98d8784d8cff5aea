"""`tunesmith advise`: baselines on a sample, a timed training probe and a recommendation (tiny model)."""
from __future__ import annotations

import json

import pytest

from tunesmith.advise import advise, choose_method, verdict
from tunesmith.cli import main


def test_advise_measures_baselines_and_recommends(recipe_file, capsys):
    out = advise(recipe_file(), sample=8)
    assert set(out["baselines"]) == {"base", "few_shot", "rag"}
    assert out["metric"] == "accuracy" and out["sample"] == 8
    assert out["baselines"]["few_shot"]["prompt_tokens"] > out["baselines"]["base"]["prompt_tokens"]
    probe = out["training_probe"]
    assert probe["tokens_per_s"] > 0 and probe["trainable_parameters"] > 0
    assert out["estimated_training_s"] > 0
    assert out["method"]["family"] and out["verdict"]["text"]
    rec = out["recommendation"]           # one answer; the fine-tune and method fields are views of it
    assert out["verdict"]["fine_tune"] is rec["fine_tune"] and out["verdict"]["text"] == rec["text"]
    assert (out["method"]["method"] is not None) is rec["fine_tune"]
    if rec["fine_tune"]:                  # the overrides that apply the advice to the recipe
        assert rec["overrides"][0] == f"method.name={rec['method']}"
        from tunesmith.config import load_recipe
        assert load_recipe(recipe_file(), rec["overrides"]).method.name == rec["method"]
    else:
        assert rec["overrides"] == []
    lo, hi = out["baselines"]["base"]["interval"]
    assert lo <= out["baselines"]["base"]["score"] <= hi
    assert out["majority"]["answer"] in ("negative", "positive") and 0 <= out["majority"]["score"] <= 1
    saved = json.loads(open(out["path"]).read())
    assert saved["baselines"]["rag"]["score"] == out["baselines"]["rag"]["score"]
    assert out["budget"] is None                     # no train.time_budget in the recipe


def test_advise_says_what_a_time_budget_covers(recipe_file):
    out = advise(recipe_file(train={"time_budget": "1s", "epochs": 3}), sample=4)
    b = out["budget"]
    assert b["budget_s"] == 1 and 0 <= b["sequences_in_budget"] <= 3 * b["train_sequences"]
    # the same probe speed as the whole-recipe estimate: budget / (time for 3 epochs) = epochs covered / 3
    expected = min(3 * 1 / out["estimated_training_s"], 3)
    assert b["fraction_of_epoch"] == pytest.approx(expected, rel=0.02, abs=1 / b["train_sequences"])
    assert "time_budget 1s covers about" in b["text"]
    short = any("under half the training data" in r for r in out["recommendation"]["reasons"])
    assert short is (out["recommendation"]["fine_tune"] and b["fraction_of_epoch"] < 0.5)
    # a budget longer than the recipe's steps covers what max_steps allows, no more
    capped = advise(recipe_file(train={"time_budget": "10h", "epochs": 3, "max_steps": 2, "batch_size": 4}),
                    sample=4)["budget"]
    assert capped["sequences_in_budget"] == 2 * 4 and capped["fraction_of_epoch"] == 8 / capped["train_sequences"]


def test_advise_cli_prints_the_numbers(recipe_file, capsys):
    assert main(["advise", str(recipe_file()), "--sample", "6"]) == 0
    text = capsys.readouterr().out
    assert "base few-shot" in text and "recommendation:" in text and "fine-tune?" in text and "method:" in text
    assert "majority class" in text and "95% CI" in text
    assert text.count("fine-tune?") == 1 and text.count("recommendation:") == 1


@pytest.mark.parametrize("n,memory,family", [
    (20, 24 << 30, "none (prompting)"), (120, 24 << 30, "small LoRA"), (1000, 24 << 30, "LoRA"),
    (20000, 24 << 30, "full fine-tuning"), (20000, 2 << 30, "LoRA")])
def test_method_choice_follows_data_size_and_memory(n, memory, family):
    probe = {"peak_rss_bytes": 1 << 30}
    assert choose_method(n, 135_000_000, memory, probe)["family"] == family


def test_method_choice_falls_back_to_light_adapters_when_memory_is_tight():
    assert choose_method(1000, 135_000_000, 4 << 30, {"peak_rss_bytes": 3 << 30})["method"] == "ia3"


def test_verdict():
    assert not verdict({"base": 0.97, "few_shot": 0.9, "rag": 0.9}, "accuracy")["fine_tune"]
    assert verdict({"base": 0.4, "few_shot": 0.45, "rag": 0.8}, "accuracy")["best_baseline"] == "rag"
    assert verdict({"base": 0.5, "few_shot": 0.6, "rag": 0.55}, "accuracy")["fine_tune"]


def test_advise_on_a_label_task_measures_label_safe_answers_and_a_frozen_head(recipe_file):
    """Labels known: the baselines are also answered label-safe, a linear head is fitted on the frozen base's
    features, and the recommendation names the label path from those numbers."""
    out = advise(recipe_file(), sample=8)
    opts = out["label_options"]
    assert opts["metric"] == out["metric"]
    assert set(opts["label_safe"]) == {"base", "few_shot", "rag"}
    head = opts["linear_probe"]
    assert head["train_examples"] >= 8 and 0 <= head["score"] <= 1
    lo, hi = head["interval"]
    assert lo <= head["score"] <= hi
    rec = out["recommendation"]
    assert rec["label_path"] in ("classification head", "SFT, label-safe answers", "SFT")
    assert any("linear head on the frozen base" in r for r in rec["reasons"])
    head_advised = "objective.name=classification" in rec["overrides"]
    assert head_advised == (rec["label_path"] == "classification head" and rec["fine_tune"])


def test_label_path_follows_the_measured_numbers():
    from tunesmith.advise import with_label_path
    rec = {"fine_tune": True, "scores": {"base": 0.4, "few_shot": 0.6}, "reasons": [], "overrides": ["method.name=lora"],
           "text": "fine-tune with LoRA"}

    def options(safe, head):
        return {"metric": "accuracy", "label_safe": {"few_shot": {"score": safe, "interval": [0, 1]}},
                "linear_probe": {"score": head, "interval": [0, 1], "train_examples": 64, "wall_s": 1.0}}
    head = with_label_path(rec, options(0.62, 0.8))
    assert head["label_path"] == "classification head"
    assert head["overrides"] == ["method.name=lora", "objective.name=classification"]
    assert head["text"].endswith(", classification head") and any("objective.name: classification" in r
                                                                   for r in head["reasons"])
    safe = with_label_path(rec, options(0.7, 0.5))
    assert safe["label_path"] == "SFT, label-safe answers"
    assert safe["overrides"] == ["method.name=lora", "objective.name=sft"]
    sft = with_label_path(rec, options(0.62, 0.5))
    assert sft["label_path"] == "SFT" and sft["overrides"] == ["method.name=lora", "objective.name=sft"]
    assert with_label_path(dict(rec, fine_tune=False, overrides=[]), options(0.62, 0.8))["overrides"] == []


def test_probe_features_with_a_shared_prompt_prefix_match_the_head_input(tiny_model_dir, monkeypatch):
    """The probe's features, computed with a long shared system prompt run once per batch, equal the
    classification head's input (each prompt alone, right-padded) within float noise."""
    import torch

    from tunesmith import models
    from tunesmith.data.example import Example
    from tunesmith.eval.linear_probe import features
    from tunesmith.objectives import classification
    from tunesmith.objectives.classification import ClassificationObjective, ClsItem
    model, tokenizer = models.load(str(tiny_model_dir))
    system = "You route messages. " + " ".join(f"label{i} means topic number {i}." for i in range(3))
    texts = ["good film", "a rather long and winding review of a bad film", "ok", "the best movie this year!"]
    exs = [Example(messages=[{"role": "system", "content": system}, {"role": "user", "content": t},
                             {"role": "assistant", "content": "x"}]) for t in texts]
    real, shared = classification.prefix_forward, []

    def spy(*a, **k):
        shared.append(a[3])
        return real(*a, **k)
    monkeypatch.setattr(classification, "prefix_forward", spy)
    got = features(model, tokenizer, exs, max_length=512, batch_size=4)
    assert len(shared) == 1 and shared[0] > 20         # the system prompt ran once for the batch
    obj = ClassificationObjective(max_length=512)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    with torch.no_grad():
        for i, ex in enumerate(exs):
            batch = obj.collate([ClsItem(obj.prompt_ids(tokenizer, ex.prompt_messages)[0], 0)], pad)
            want = obj.pooled(model, batch["input_ids"], batch["attention_mask"])[0].numpy()
            assert abs(got[i] - want).max() < 1e-4 * max(1.0, abs(want).max())

def test_advise_on_a_head_recipe_names_the_objective_of_its_path(recipe_file):
    """On a recipe that already trains a head, advise times that objective's steps and names the objective of the
    path it recommends (SFT paths say objective.name=sft, so applying the overrides gives that path)."""
    out = advise(recipe_file(objective={"name": "classification"}), sample=8)
    assert out["training_probe"]["tokens_per_s"] > 0
    rec = out["recommendation"]
    if rec["fine_tune"]:
        named = [o for o in rec["overrides"] if o.startswith("objective.name=")]
        assert named == [("objective.name=classification" if rec["label_path"] == "classification head"
                          else "objective.name=sft")]
