"""Label tasks on chat data: the label set is inferred from the answers, or the recipe is refused before
any compute (no run folder) when accuracy has nothing to be measured over."""
from __future__ import annotations

import json

import pytest

from tunesmith import pipeline
from tunesmith.errors import TunesmithError
from tunesmith.session import Session

SYSTEM = ("You route customer messages for an online shop. Answer with exactly one team name: billing, "
          "shipping, returns or account.")
TEAMS = {"billing": "I was charged twice for order {i}", "shipping": "Where is my parcel {i}? It is late",
         "returns": "How do I send back item {i}, it does not fit", "account": "I cannot log in to account {i}"}


def _chat_file(path, free_text: bool = False):
    rows = []
    for i in range(60):
        team = list(TEAMS)[i % 4]
        answer = f"Thanks for message {i}: we looked into it and will reply by email." if free_text else team
        rows.append({"messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": TEAMS[team].format(i=i)},
                                  {"role": "assistant", "content": answer}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_answers_from_a_small_set_are_the_label_set(recipe_file, tmp_path):
    data = _chat_file(tmp_path / "route.jsonl")
    recipe = recipe_file(data={"train": str(data), "format": "auto", "labels": None, "max_length": 400})
    run = pipeline.prepare(recipe)
    assert run.load_json("data/manifest.json")["inferred_labels"] == sorted(TEAMS)
    assert sorted(Session(run).labels) == sorted(TEAMS)


def test_accuracy_without_any_label_set_is_refused_before_a_run_folder(recipe_file, tmp_path):
    data = _chat_file(tmp_path / "free.jsonl", free_text=True)
    recipe = recipe_file(data={"train": str(data), "format": "auto", "labels": None, "max_length": 400})
    with pytest.raises(TunesmithError, match="label set"):
        pipeline.prepare(recipe)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_tuned_model_stops_after_its_answer(finished_run):
    """The end-of-turn token is trained with every answer: the tuned model's replies are whole labels, not
    labels followed by more text up to the token limit (eval.max_new_tokens leaves room to run on)."""
    tuned = json.loads((finished_run.path / "eval" / "tuned.json").read_text())
    replies = [p["prediction"] for p in tuned["predictions"]]
    assert replies and sum(r in ("negative", "positive") for r in replies) >= 0.9 * len(replies), replies
    recipe = (finished_run.path / "recipe.yaml").read_text()
    assert "max_new_tokens: 4" in recipe
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(finished_run.path / "model")
    assert max(len(tok(label, add_special_tokens=False)["input_ids"]) for label in ("negative", "positive")) < 4
