"""Preference tuning: the preference data format, DPO/ORPO losses, short training runs, and a CLI run."""
import json
import math

import pytest
import torch

from tiny import make_model
from tunesmith.config import DataConfig, MethodConfig, Recipe, TrainConfig
from tunesmith.data.example import Example
from tunesmith.data.formats import detect_format, load_examples, load_examples_strict, to_example
from tunesmith.data.tokenize import IGNORE
from tunesmith.errors import TunesmithError
from tunesmith.methods import get as get_method
from tunesmith.objectives import from_recipe
from tunesmith.objectives.preference import (DPOObjective, ORPOObjective, collate_pairs, dpo_loss,
                                             log_odds, orpo_loss, sequence_logps)
from tunesmith.train.loop import evaluate_loss, train


def cfg(**kw) -> DataConfig:
    return DataConfig(train="unused", **kw)


USER = [{"role": "user", "content": "How was it?"}]
OPENAI = {"input": {"messages": USER, "tools": [], "parallel_tool_calls": True},
          "preferred_output": [{"role": "assistant", "content": "It was great."}],
          "non_preferred_output": [{"role": "assistant", "content": "It was bland."}]}


# ------------------------------------------------------------------ data format

@pytest.mark.parametrize("record", [
    OPENAI,
    {"input": {"messages": USER}, "preferred_completion": [{"role": "assistant", "content": "a"}],
     "non_preferred_completion": [{"role": "assistant", "content": "b"}]},
    {"prompt": "How was it?", "chosen": "a", "rejected": "b"},
    {"chosen": USER + [{"role": "assistant", "content": "a"}], "rejected": USER + [{"role": "assistant",
                                                                                    "content": "b"}]},
])
def test_preference_records_are_detected(record):
    assert detect_format(record, cfg()) == "preference"


def test_openai_dpo_records_normalise_to_prompt_chosen_and_rejected():
    ex = to_example(OPENAI, "preference", cfg(), "d.jsonl", 3)
    assert ex.messages == USER + [{"role": "assistant", "content": "It was great."}]
    assert ex.rejected == "It was bland." and ex.line == 3
    assert ex.reference == "It was great." and ex.prompt_messages == USER
    assert "It was bland." in ex.full_text()      # dedup and PII scans see the rejected reply too
    other = {"input": {"messages": USER}, "preferred_completion": [{"role": "assistant", "content": "yes"}],
             "non_preferred_completion": [{"role": "assistant", "content": "no"}]}
    ex2 = to_example(other, "preference", cfg(system_prompt="Be brief."), "d.jsonl", 1)
    assert ex2.messages[0] == {"role": "system", "content": "Be brief."}
    assert (ex2.messages[-1]["content"], ex2.rejected) == ("yes", "no")


def test_prompt_chosen_rejected_strings_lists_and_implicit_prompts():
    ex = to_example({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}, "preference", cfg(), "f", 1)
    assert ex.messages == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]
    assert ex.rejected == "Go away."
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi?"}]
    ex = to_example({"prompt": conv, "chosen": [{"role": "assistant", "content": "Hello!"}],
                     "rejected": [{"role": "assistant", "content": "No."}]}, "preference", cfg(), "f", 1)
    assert ex.messages == conv + [{"role": "assistant", "content": "Hello!"}] and ex.rejected == "No."
    ex = to_example({"chosen": conv + [{"role": "assistant", "content": "Hello!"}],
                     "rejected": conv + [{"role": "assistant", "content": "No."}]}, "preference", cfg(), "f", 1)
    assert ex.messages == conv + [{"role": "assistant", "content": "Hello!"}] and ex.rejected == "No."


def test_preference_errors_name_line_kind_and_field(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    rows = [
        OPENAI,                                                                            # 1 ok
        {"input": {"messages": USER}, "non_preferred_output": [{"role": "assistant", "content": "b"}]},
        {"input": {"messages": USER}, "preferred_output": [{"role": "assistant", "content": "  "}],
         "non_preferred_output": [{"role": "assistant", "content": "b"}]},
        {"input": {"messages": USER}, "preferred_output": [{"role": "user", "content": "a"}],
         "non_preferred_output": [{"role": "assistant", "content": "b"}]},
        {"input": "How?", "preferred_output": "a", "non_preferred_output": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"chosen": USER + [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
        {"prompt": "p", "chosen": "", "rejected": "b"},
        good,                                                                              # 9 ok
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, errors = load_examples(cfg(), str(path))
    assert [e.line for e in examples] == [1, 9]
    got = [(e["line"], e["kind"], e["field"]) for e in errors]
    assert got == [(2, "missing_field", "preferred_output"),
                   (3, "empty_content", "preferred_output[0].content"),
                   (4, "bad_reply", "preferred_output[0].role"),
                   (5, "bad_type", "input"),
                   (6, "identical_replies", None),
                   (7, "prompt_mismatch", "rejected"),
                   (8, "empty_content", "chosen")]
    with pytest.raises(TunesmithError) as e:
        load_examples_strict(cfg(), str(path))
    assert str(e.value).startswith(f"{path}:2: field 'preferred_output': missing")


# ------------------------------------------------------------------ pairs and losses

def pref_examples(n: int, offset: int = 0) -> list[Example]:
    """Toy preferences: always prefer "It was bland." over "It was great." (the untuned tiny model
    prefers the opposite, so learning shows)."""
    topics = ["movie", "food", "dog", "fox", "actors", "review"]
    return [Example(messages=[{"role": "user", "content": f"How was the {topics[i % 6]} {i + offset}?"},
                              {"role": "assistant", "content": "It was bland."}], rejected="It was great.")
            for i in range(n)]


def recipe(name="dpo", **objective) -> Recipe:
    return Recipe.model_validate({"data": {"train": "unused", "max_length": 64},
                                  "objective": {"name": name, **objective},
                                  "train": {"batch_size": 4}, "eval": {"batch_size": 8}})


@pytest.fixture
def splits():
    return {"train": pref_examples(32), "validation": pref_examples(8, 100), "test": pref_examples(8, 200)}


def test_pairs_train_only_the_final_reply_and_batch_chosen_first(tokenizer):
    ex = Example(messages=[{"role": "user", "content": "a?"}, {"role": "assistant", "content": "first"},
                           {"role": "user", "content": "b?"}, {"role": "assistant", "content": "great"}],
                 rejected="bland")
    r = recipe()
    objective = from_recipe(r)
    assert isinstance(objective, DPOObjective) and objective.beta == 0.1
    items, stats = objective.build({"train": [ex]}, tokenizer, r)
    pair = items["train"][0]
    trained = lambda t: tokenizer.decode([x for x in t.labels if x != IGNORE])  # noqa: E731
    assert trained(pair.chosen) == "great<|im_end|>" and trained(pair.rejected) == "bland<|im_end|>"
    assert pair.length == pair.chosen.length + pair.rejected.length and stats["train"]["kept"] == 1
    batch = collate_pairs(items["train"] * 3, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["n_loss"] == 3 and "ref_chosen" not in batch
    assert batch["input_ids"][0].tolist()[:pair.chosen.length] == pair.chosen.input_ids
    assert batch["input_ids"][3].tolist()[:pair.rejected.length] == pair.rejected.input_ids
    with pytest.raises(TunesmithError, match="preference data"):
        objective.build({"train": [Example(messages=ex.messages)]}, tokenizer, r)


def test_sequence_logps_match_full_logits(tokenizer, splits):
    r = recipe()
    items, _ = DPOObjective.from_recipe(r).build(splits, tokenizer, r)
    model = make_model(tokenizer)
    batch = collate_pairs(items["test"][:3], tokenizer.pad_token_id)
    sums, counts = sequence_logps(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    expected = (logp * (targets != IGNORE)).sum(1)
    assert torch.allclose(sums, expected, atol=1e-4)
    assert counts.tolist() == (targets != IGNORE).sum(1).tolist()


def test_dpo_loss_is_log2_per_pair_when_policy_is_the_reference(tokenizer, splits):
    r = recipe()
    objective = DPOObjective.from_recipe(r)
    items, _ = objective.build(splits, tokenizer, r)
    model = make_model(tokenizer)
    objective.before_training(model, items)
    assert all(p.ref_chosen < 0 and p.ref_rejected < 0 for s in items.values() for p in s)
    model = get_method("lora").apply(model, MethodConfig(r=4, alpha=8, dropout=0.0))   # B = 0: same function
    out = objective(model, collate_pairs(items["train"][:5], tokenizer.pad_token_id))
    assert out.count == 5
    assert float(out.loss_sum) == pytest.approx(5 * math.log(2), abs=1e-4)
    assert out.metrics["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(RuntimeError, match="reference"):
        objective(model, collate_pairs([p.__class__(p.chosen, p.rejected) for p in items["train"][:2]], 0))


def test_dpo_and_orpo_losses_match_hand_computation():
    pc, pr = torch.tensor([-4.0, -9.0]), torch.tensor([-6.0, -3.0])
    rc, rr = torch.tensor([-5.0, -8.0]), torch.tensor([-5.0, -4.0])
    loss, reward_c, reward_r = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 0: 0.5 * ((-4 + 5) - (-6 + 5)) = 1.0 ; pair 1: 0.5 * ((-9 + 8) - (-3 + 4)) = -1.0
    assert loss.tolist() == pytest.approx([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.0))])
    assert reward_c.tolist() == [0.5, -0.5] and reward_r.tolist() == [-0.5, 0.5]

    nc, nr = torch.tensor([2, 3]), torch.tensor([4, 1])
    loss, nll, ratio = orpo_loss(pc, pr, nc, nr, beta=0.2)
    for i, (c, r_, a, b) in enumerate([(-4.0, -6.0, 2, 4), (-9.0, -3.0, 3, 1)]):
        lc, lr = c / a, r_ / b
        odds = lambda x: math.log(math.exp(x) / (1 - math.exp(x)))  # noqa: E731
        z = odds(lc) - odds(lr)
        assert float(ratio[i]) == pytest.approx(z, rel=1e-5)
        assert float(nll[i]) == pytest.approx(-lc)
        assert float(loss[i]) == pytest.approx(-lc + 0.2 * math.log(1 + math.exp(-z)), rel=1e-5)
    assert torch.isfinite(log_odds(torch.tensor([0.0, -1e-12, -50.0]))).all()


# ------------------------------------------------------------------ training

def run_short(objective, tokenizer, splits, tmp_path):
    r = recipe(objective.name)
    items, _ = objective.build(splits, tokenizer, r)
    model = make_model(tokenizer)
    if hasattr(objective, "before_training"):
        objective.before_training(model, items)
    base = objective.evaluate(model, tokenizer, splits["test"], items["test"], r, which="base")
    model = get_method("lora").apply(model, MethodConfig(r=4, alpha=8, dropout=0.0))
    cfg = TrainConfig(epochs=2, batch_size=4, lr=5e-3, eval_every=4, save_every=100,
                      early_stopping_patience=None, threads=1)
    val_before = evaluate_loss(model, items["validation"], objective, batch_size=4, pad_id=tokenizer.pad_token_id)
    result = train(model, items["train"], items["validation"], objective, cfg, tmp_path,
                   pad_id=tokenizer.pad_token_id)
    assert result.best_val_loss < val_before["val_loss"]
    tuned = objective.evaluate(model, tokenizer, splits["test"], items["test"], r, which="tuned")
    return base, tuned, model, items


def test_short_dpo_run_raises_held_out_reward_accuracy_and_margin(tokenizer, splits, tmp_path):
    base, tuned, model, items = run_short(DPOObjective(beta=0.1), tokenizer, splits, tmp_path)
    b, t = base["metrics"], tuned["metrics"]
    assert "reward_accuracy" not in b                   # the base's implicit reward is 0 by definition
    assert b["logp_preference_accuracy"] < 0.5 and t["logp_preference_accuracy"] == 1.0
    assert t["reward_accuracy"] == 1.0 and t["reward_margin"] > 0.5
    assert t["logp_margin"] > b["logp_margin"] + 1.0
    assert t["chosen_logp"] > b["chosen_logp"] and t["rejected_logp"] < b["rejected_logp"]
    pred = tuned["predictions"][0]
    assert pred["correct"] and pred["prediction"] == pred["reference"] == pred["chosen"] == "It was bland."
    assert pred["rejected"] == "It was great." and pred["prompt"][-1]["role"] == "user"

    # a new process has no reference log-probs on its items: they come from the disabled adapter
    fresh = [p.__class__(p.chosen, p.rejected, p.example) for p in items["test"]]
    again = DPOObjective(beta=0.1).evaluate(model, tokenizer, None, fresh, recipe(), which="tuned")
    assert again["metrics"]["reward_margin"] == pytest.approx(t["reward_margin"], abs=1e-4)
    assert [p.ref_chosen for p in fresh] == pytest.approx([p.ref_chosen for p in items["test"]], abs=1e-4)


def test_dpo_evaluation_without_references_loads_the_base_for_plain_models(tokenizer, splits, tiny_model_dir):
    r = Recipe.model_validate({**recipe().model_dump(), "model": {"name": str(tiny_model_dir)}})
    objective = DPOObjective.from_recipe(r)
    items, _ = objective.build(splits, tokenizer, r)
    model = make_model(tokenizer)
    with torch.no_grad():                       # a "fully fine-tuned" model: the head is changed
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("lan")] += 0.5
    out = objective.evaluate(model, tokenizer, None, items["test"], r, which="tuned")
    assert all(p.ref_chosen is not None for p in items["test"])
    reference = make_model(tokenizer)           # what tiny_model_dir holds
    objective.before_training(reference, {"test": items["test"]})
    s = objective.score(model, items["test"])
    expected = 0.1 * ((s[:, 0] - torch.tensor([p.ref_chosen for p in items["test"]], dtype=torch.float64))
                      - (s[:, 1] - torch.tensor([p.ref_rejected for p in items["test"]], dtype=torch.float64)))
    assert out["metrics"]["reward_margin"] == pytest.approx(float(expected.mean()), abs=1e-4)
    assert out["metrics"]["reward_margin"] > 0.05 and out["metrics"]["reward_accuracy"] == 1.0


def test_short_orpo_run_raises_held_out_preference(tokenizer, splits, tmp_path):
    base, tuned, _, _ = run_short(ORPOObjective(beta=0.1), tokenizer, splits, tmp_path)
    b, t = base["metrics"], tuned["metrics"]
    assert b["logp_preference_accuracy"] < 0.5 and t["logp_preference_accuracy"] == 1.0
    assert t["logp_margin"] > b["logp_margin"] + 0.5 and t["chosen_logp"] > b["chosen_logp"]


def test_dpo_through_a_prompt_tuning_wrapper(tokenizer, splits):
    from peft import PromptTuningConfig, get_peft_model
    r = recipe()
    objective = DPOObjective.from_recipe(r)
    items, _ = objective.build(splits, tokenizer, r)
    base = make_model(tokenizer)
    objective.before_training(base, items)
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    batch = collate_pairs(items["train"][:4], tokenizer.pad_token_id)
    out = objective(model, batch)
    out.loss_sum.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    with model.disable_adapter():     # without the soft prompt: the reference again
        sums, _ = sequence_logps(model, batch)
    assert torch.allclose(sums[:4], batch["ref_chosen"], atol=1e-4)


# ------------------------------------------------------------------ end to end

@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_cli_run_reports_preference_metrics(objective, recipe_file, tmp_path):
    from tunesmith.cli import main
    data = tmp_path / "prefs.jsonl"
    rows = [{"input": {"messages": [{"role": "user", "content": f"How was the visit number {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": "It was bland."}],
             "non_preferred_output": [{"role": "assistant", "content": "It was great."}]} for i in range(48)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = recipe_file(task="preference", objective={"name": objective},
                       data={"train": str(data), "format": "auto", "labels": None},
                       train={"epochs": 2, "batch_size": 4, "lr": 5e-3, "eval_every": 5, "save_every": 5})
    assert main(["run", str(path)]) == 0
    run = tmp_path / "runs" / "tiny-001"
    summary = json.loads((run / "eval" / "summary.json").read_text())
    base, tuned = summary["base"]["metrics"], summary["tuned"]["metrics"]
    assert {"logp_preference_accuracy", "logp_margin", "chosen_logp", "rejected_logp"} <= base.keys()
    assert tuned["logp_preference_accuracy"] > base["logp_preference_accuracy"]
    if objective == "dpo":
        assert tuned["reward_accuracy"] > 0.5 and tuned["reward_margin"] > 0
    assert summary["flips"]["base_wrong_tuned_right"] > 0
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["counts"]["train"] > 0
    assert json.loads((run / "data" / "train.jsonl").read_text().splitlines()[0])["rejected"] == "It was great."
    assert (run / "export" / "merged" / "model.safetensors").is_file()
