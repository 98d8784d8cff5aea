"""Classification objective: a new head on the tiny causal LM, feature extraction vs LoRA, save/load, eval, CLI."""
import json
import math
import warnings

import pytest
import torch

from tiny import sentiment_rows
from tiny import make_model
from tunesmith import methods, objectives
from tunesmith.config import load_recipe
from tunesmith.data.example import Example
from tunesmith.data.prepare import build_splits
from tunesmith.errors import TunesmithError
from tunesmith.objectives.classification import HEAD_NAME, ClassificationObjective
from tunesmith.train.loop import train


def make_recipe(tmp_path, n_rows=80, **method):
    path = tmp_path / f"sentiment-{n_rows}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(n_rows)))
    return load_recipe({
        "name": "cls", "task": "classification", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(path), "format": "labelled", "labels": {"0": "negative", "1": "positive"},
                 "instruction": "Is this positive or negative?", "max_length": 64,
                 "clean": {"near_dedup": False}},
        "method": {"name": "freeze", "top_k_layers": 0, **method} if method.get("name") == "freeze"
        else {"name": "lora", "r": 4, "alpha": 8, **method},
        "objective": {"name": "classification"},
        "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "eval_every": 10, "save_every": 1000,
                  "device": "cpu", "early_stopping_patience": None},
        "eval": {"batch_size": 8, "max_new_tokens": 4}})


def prepared(tmp_path, tokenizer, n_rows=80, **method):
    """(recipe, splits, objective, items, model with the head and the method applied)."""
    recipe = make_recipe(tmp_path, n_rows, **method)
    splits, _ = build_splits(recipe)
    obj = objectives.from_recipe(recipe)
    items, _ = obj.build(splits, tokenizer, recipe)
    model = obj.attach(make_model(tokenizer), tokenizer, recipe)
    model = methods.get(recipe.method.name).apply(model, recipe.method)
    return recipe, splits, obj, items, obj.after_method(model)


def fit(model, obj, items, recipe, tmp_path, tokenizer):
    return train(model, items["train"], items["validation"], obj, recipe.train, tmp_path / "run",
                 pad_id=tokenizer.pad_token_id)


def labelled(text, label):
    return Example(messages=[{"role": "user", "content": text}, {"role": "assistant", "content": label}],
                   text=text, label=label)


def test_registry_builds_prompt_items_and_batches(tmp_path, tokenizer):
    recipe = make_recipe(tmp_path)
    obj = objectives.from_recipe(recipe)
    assert isinstance(obj, ClassificationObjective) and obj.mergeable is False
    splits = {"train": [labelled("so great", "positive"), labelled("so cold", "negative")],
              "test": [labelled("quick", "positive")]}
    items, stats = obj.build(splits, tokenizer, recipe)
    assert obj.labels == ["negative", "positive"]
    assert [i.label for i in items["train"]] == [1, 0]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "so great"}], tokenize=False,
                                           add_generation_prompt=True)
    assert items["train"][0].input_ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert "positive" not in tokenizer.decode(items["train"][0].input_ids)   # the answer is not an input
    batch = obj.collate(items["train"], tokenizer.pad_token_id)
    width = max(i.length for i in items["train"])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, width)
    assert batch["labels"].tolist() == [1, 0] and batch["n_loss"] == 2
    assert batch["n_tokens"] == int(batch["attention_mask"].sum()) == stats["train"]["tokens"]
    with pytest.raises(TunesmithError, match="at least two labels"):
        ClassificationObjective().build({"train": [labelled("x", "positive")]}, tokenizer, recipe)


def test_left_truncation_keeps_the_last_token(tmp_path, tokenizer):
    recipe = make_recipe(tmp_path).model_copy(deep=True)
    recipe.data.max_length = 16
    obj = ClassificationObjective.from_recipe(recipe)
    long_text = " ".join(["the movie was wonderful"] * 20)
    items, stats = obj.build({"train": [labelled(long_text, "positive"), labelled("cold", "negative")]},
                             tokenizer, recipe)
    full = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": long_text}], tokenize=False,
                                                   add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert len(full) > 16
    assert items["train"][0].input_ids == full[-16:]
    assert tokenizer.decode(items["train"][0].input_ids).endswith("<|im_start|>assistant\n")
    assert stats["train"]["truncated"] == 1


def test_feature_extraction_trains_only_the_head(tmp_path, tokenizer):
    recipe, _, obj, items, model = prepared(tmp_path, tokenizer, name="freeze")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # freeze with top_k_layers=0 keeps its documented final norm; the unused (untied) LM head is frozen
    assert trainable == {f"{HEAD_NAME}.weight", f"{HEAD_NAME}.bias", "model.norm.weight"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = fit(model, obj, items, recipe, tmp_path, tokenizer)
    assert result.best_val_loss < math.log(2) - 0.05          # the probe learns something on random features
    for n, p in model.named_parameters():
        if n.startswith(HEAD_NAME):
            assert not torch.equal(before[n], p), n
        elif n != "model.norm.weight":
            assert torch.equal(before[n], p), f"base weight {n} changed"


def test_a_frozen_head_is_reported(tmp_path, tokenizer):
    recipe = make_recipe(tmp_path, name="freeze")
    splits, _ = build_splits(recipe)
    obj = objectives.from_recipe(recipe)
    items, _ = obj.build(splits, tokenizer, recipe)
    model = methods.get("freeze").apply(obj.attach(make_model(tokenizer), tokenizer, recipe), recipe.method)
    assert not obj.head(model).weight.requires_grad       # what after_method exists to undo
    model.train()
    with pytest.warns(RuntimeWarning, match="after_method"):
        obj(model, obj.collate(items["train"][:2], tokenizer.pad_token_id))


@pytest.fixture(scope="module")
def lora_trained(tmp_path_factory, tokenizer):
    tmp_path = tmp_path_factory.mktemp("lora-cls")
    recipe, splits, obj, items, model = prepared(tmp_path, tokenizer, n_rows=240, name="lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, obj, items, recipe, tmp_path, tokenizer)
    return recipe, splits, obj, model, before, tmp_path


def test_lora_trains_adapters_and_head_and_learns_the_task(lora_trained, tokenizer):
    recipe, splits, obj, model, before, _ = lora_trained
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert {f"base_model.model.{HEAD_NAME}.weight", f"base_model.model.{HEAD_NAME}.bias"} <= changed
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    assert all("lora_" in n or HEAD_NAME in n for n in changed), changed
    result = obj.evaluate(model, tokenizer, splits["test"], [], recipe, which="tuned")
    assert len(result["predictions"]) == len(splits["test"]) >= 40
    assert result["metrics"]["accuracy"] >= 0.9 and result["metrics"]["macro_f1"] >= 0.9
    assert result["loss"]["val_loss"] < 0.3
    details = result["label_details"]
    assert details["labels"] == ["negative", "positive"]
    assert sum(map(sum, details["confusion"])) == len(splits["test"])
    first = result["predictions"][0]
    assert first["prompt"][-1]["role"] == "user" and first["prediction"] in obj.labels
    assert first["prediction"] == max(first["probabilities"], key=first["probabilities"].get)


def test_predictions_are_probability_distributions(lora_trained, tokenizer):
    _, splits, obj, model, _, _ = lora_trained
    raw = ["the movie was wonderful great", "the food was cold bland"]
    out = obj.predict(model, tokenizer, raw + [splits["test"][0].prompt_messages, splits["test"][1]])
    for row in out:
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    assert [r["label"] for r in out[:2]] == ["positive", "negative"]   # raw text gets the recipe's prompt
    assert [r["label"] for r in out[2:]] == [splits["test"][0].label, splits["test"][1].label]


def test_save_and_load_round_trip_gives_identical_probabilities(lora_trained, tokenizer):
    recipe, splits, obj, model, _, tmp_path = lora_trained
    out = tmp_path / "saved"
    method = methods.get("lora")
    method.save(model, out)
    obj.save_extra(model, out)
    meta = json.loads((out / "cls_head.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and meta["hidden_size"] == 64
    fresh_obj = ClassificationObjective.from_recipe(recipe)
    fresh = method.load(make_model(tokenizer), out, recipe.method)   # no head yet: load_extra attaches it
    fresh = fresh_obj.load_extra(fresh, out)
    prompts = [ex.prompt_messages for ex in splits["test"][:12]]
    want, _ = obj.probabilities(model, tokenizer, prompts)
    got, _ = fresh_obj.probabilities(fresh, tokenizer, prompts)
    assert torch.equal(want, got)
    # mismatches fail with one clear error
    with pytest.raises(TunesmithError, match="saved labels"):
        ClassificationObjective(["a", "b", "c"]).load_extra(make_model(tokenizer), out)
    with pytest.raises(TunesmithError, match="no classification head"):
        ClassificationObjective().load_extra(make_model(tokenizer), tmp_path / "nowhere")


def test_base_is_evaluated_zero_shot_by_generation(tmp_path, tokenizer):
    recipe = make_recipe(tmp_path)
    splits, _ = build_splits(recipe)
    obj = objectives.from_recipe(recipe)
    obj.build(splits, tokenizer, recipe)
    test = splits["test"][:6]
    result = obj.evaluate(make_model(tokenizer), tokenizer, test, [], recipe, which="base")
    assert set(result["metrics"]) == {"accuracy", "macro_precision", "macro_recall", "macro_f1"}
    assert [p["reference"] for p in result["predictions"]] == [ex.label for ex in test]
    assert all(isinstance(p["prediction"], str) and "probabilities" not in p for p in result["predictions"])
    assert result["loss"] == {} and sum(map(sum, result["label_details"]["confusion"])) == len(test)


def test_prompt_tuning_wrapper_path_trains_prompt_and_head(tmp_path, tokenizer):
    from peft import PromptTuningConfig, get_peft_model
    recipe = make_recipe(tmp_path)
    splits, _ = build_splits(recipe)
    obj = objectives.from_recipe(recipe)
    items, _ = obj.build(splits, tokenizer, recipe)
    model = obj.attach(make_model(tokenizer), tokenizer, recipe)
    model = obj.after_method(get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)))
    model.train()
    batch = obj.collate(items["train"][:4], tokenizer.pad_token_id)
    out = obj(model, batch)
    out.loss_sum.backward()
    assert out.count == 4 and 0 <= out.metrics["correct"] <= 4
    assert obj.head(model).weight.grad is not None
    assert model.prompt_encoder["default"].embedding.weight.grad.abs().sum() > 0


def test_cli_run_with_a_classification_head(recipe_file, tmp_path, tokenizer):
    from safetensors.torch import load_file
    from tunesmith.cli import main
    recipe = recipe_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(recipe), "objective.name=classification", "method.name=freeze",
                     "method.top_k_layers=0", "train.lr=5e-2"]) == 0
    run = tmp_path / "runs" / "tiny-001"
    notes = json.loads((run / "train.json").read_text())["objective_notes"]
    assert notes["head start"].startswith("linear probe of the base on ")
    assert "Head start" in (run / "report.md").read_text()
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert {"accuracy", "macro_f1"} <= summary["tuned"]["metrics"].keys()
    assert {"accuracy", "macro_f1"} <= summary["base"]["metrics"].keys()     # zero-shot by generation
    assert summary["tuned"]["loss"]["val_loss"] < math.log(2)
    tuned = json.loads((run / "eval" / "tuned.json").read_text())
    assert all(sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for p in tuned["predictions"])
    adapter = run / "export" / "adapter"
    for rel in ["tuned_weights.safetensors", "cls_head.safetensors", "cls_head.json"]:
        assert (adapter / rel).is_file(), rel
    assert not (run / "export" / "merged").exists()          # transformers could not load the head
    # the head trained: it differs from the seeded initial head
    initial = ClassificationObjective(["negative", "positive"]).attach(make_model(tokenizer), None, None)
    saved = load_file(str(run / "model" / "cls_head.safetensors"))
    assert not torch.equal(saved["weight"], getattr(initial, HEAD_NAME).weight.detach())



def test_a_shared_system_prompt_runs_once_with_the_same_head_input_and_gradients(tokenizer, monkeypatch):
    """Rows sharing a long system prompt (labels listed in it): the prompt runs once per batch, its keys/values
    repeated; the head's logits, loss and LoRA gradients equal every row computing its whole prompt."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.objectives import classification, sft
    system = "You sort short reviews into positive or negative. " * 6
    obj = ClassificationObjective(["negative", "positive"], max_length=512)
    items = [classification.ClsItem(obj.prompt_ids(tokenizer, [{"role": "system", "content": system},
                                                               {"role": "user", "content": u}])[0], y)
             for u, y in [("the movie was fun", 1), ("dull", 0), ("a long and winding tale of woe", 0)]]
    batch = obj.collate(items, tokenizer.pad_token_id)
    start = sft.rows_prefix(batch["input_ids"], batch["attention_mask"])
    assert start >= sft.SHARED_PREFIX_MIN
    model = get_peft_model(make_model(tokenizer), LoraConfig(r=4, target_modules="all-linear",
                                                             init_lora_weights=False)).train()
    obj.attach(model)
    obj.after_method(model)
    backbone = model.get_base_model().get_decoder()

    def run():
        model.zero_grad()
        calls = []
        hook = backbone.register_forward_pre_hook(lambda _m, a, kw: calls.append(kw["input_ids"].shape),
                                                  with_kwargs=True)
        out = obj(model, batch)
        out.loss_sum.backward()
        hook.remove()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, calls
    shared, grads, calls = run()
    assert calls == [(1, start), (3, batch["input_ids"].shape[1] - start)]     # the prompt once, then each row
    monkeypatch.setattr(sft, "SHARED_PREFIX_MIN", 10**9)
    full, ref, calls = run()
    assert calls == [tuple(batch["input_ids"].shape)]
    assert torch.allclose(shared.loss_sum, full.loss_sum, rtol=1e-5) and shared.metrics == full.metrics
    assert max((grads[k] - ref[k]).abs().max().item() for k in ref) < 1e-5 * max(r.abs().max().item() for r in ref.values())


@pytest.mark.parametrize("classes", [2, 4])
def test_the_probe_folded_into_one_linear_map_gives_the_regressions_probabilities(classes):
    """``fit_linear`` folds the standardisation into the head's weights: softmax of ``x @ W.T + b`` is
    scikit-learn's probability for every class (binary included); a class the sample lacks gets ~0."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tunesmith.objectives.classification import PROBE_C, fit_linear
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12)) * rng.uniform(0.01, 50, size=12) + rng.normal(size=12) * 10
    y = [i % classes for i in range(60)]
    x[np.arange(60), np.array(y)] += 3.0                  # separable-ish along one axis per class
    weight, bias = fit_linear(x, y, classes + 1)          # one more class than the sample has
    got = torch.softmax(torch.tensor(x, dtype=torch.float32) @ weight.T + bias, dim=-1).numpy()
    scaler = StandardScaler().fit(x)
    want = LogisticRegression(max_iter=2000, C=PROBE_C).fit(scaler.transform(x), y).predict_proba(scaler.transform(x))
    assert np.abs(got[:, :classes] - want).max() < 1e-3
    assert got[:, classes].max() < 1e-3


def test_the_head_starts_from_a_probe_of_the_untouched_model(tmp_path, tokenizer):
    """``head_init: probe`` (the default): before the method, the head becomes the linear probe of the base's
    features, so the untrained model already predicts what the probe fitted; ``random`` keeps the seeded
    noise. The pipeline calls the hook with the training items."""
    from tunesmith.tuned import prepare_for_training
    recipe = make_recipe(tmp_path, name="freeze", top_k_layers=0)
    assert recipe.objective.head_init == "probe"
    splits, _ = build_splits(recipe)
    starts = {}
    for init in ("probe", "random"):
        r = recipe.model_copy(deep=True)
        r.objective.head_init = init
        obj = objectives.from_recipe(r)
        items, _ = obj.build(splits, tokenizer, r)
        model = prepare_for_training(make_model(tokenizer), methods.get("freeze"), obj, r, tokenizer, seqs=items)
        starts[init] = (obj, model, items)
    obj, model, items = starts["probe"]
    assert obj.head_start["init"] == "probe" and obj.head_start["examples"] == len(items["train"])
    feats = obj.features(model, items["train"], tokenizer.pad_token_id)
    head = obj.head(model)
    acc = float(((feats @ head.weight.detach().T + head.bias.detach()).argmax(-1)
                 == torch.tensor([i.label for i in items["train"]])).float().mean())
    assert acc == pytest.approx(obj.head_start["train_accuracy"])
    assert acc > 0.6                                    # the tiny model's features separate some of the words
    robj, rmodel, _ = starts["random"]
    assert robj.head_start is None
    noise = ClassificationObjective(["negative", "positive"]).attach(make_model(tokenizer), None, recipe)
    assert torch.equal(robj.head(rmodel).weight, getattr(noise, HEAD_NAME).weight)
    assert not torch.equal(head.weight, robj.head(rmodel).weight)


def test_under_a_time_budget_the_probe_stops_at_its_share(tmp_path, tokenizer, monkeypatch):
    """With ``probe_budget_s`` the features stop before a chunk that would pass it (judged by the mean chunk so
    far; at least one chunk), and the head starts from a probe of those items; the record says how many of the sample."""
    from tunesmith.objectives import classification
    recipe = make_recipe(tmp_path, n_rows=200, name="freeze", top_k_layers=0)
    splits, _ = build_splits(recipe)
    obj = objectives.from_recipe(recipe)
    assert obj.probe_budget_s is None and obj.probe_examples == 1024
    items, _ = obj.build(splits, tokenizer, recipe)
    model = obj.attach(make_model(tokenizer), tokenizer, recipe)
    monkeypatch.setattr(classification, "PROBE_CHUNK", 16)
    obj.probe_budget_s = 1e-9                                # out of time after the first chunk
    obj.before_training(model, items)
    assert obj.head_start["examples"] == 16 and obj.head_start["sampled"] == len(items["train"]) > 16
    budgeted = load_recipe({**recipe.model_dump(), "train": {**recipe.train.model_dump(), "time_budget": "2m"}})
    assert objectives.from_recipe(budgeted).probe_budget_s == pytest.approx(0.5 * 120)


def _classification_recipe(**extra):
    return load_recipe({"task": "classification", "data": {"train": "x.jsonl"}, **extra})


def test_a_classification_task_under_a_time_budget_trains_a_head_unless_text_answers_are_asked_for():
    """Under train.time_budget a label task trains a head by default (it won by far on the bench's router and spam
    tasks under a 5-minute budget); without a budget, and for every other task, sft stays the default (the whole
    epoch of SFT beat the head on the demo's sentiment task)."""
    budget = {"train": {"time_budget": "5m"}}
    assert _classification_recipe().objective.name == "sft"
    assert _classification_recipe(**budget).objective.name == "classification"
    assert load_recipe({"task": "sft", "data": {"train": "x.jsonl"}, **budget}).objective.name == "sft"
    # what only a model answering in text gives, or what the head does not combine with: sft
    for extra in [{"export": {"gguf": ["f16"]}}, {"export": {"merged": True}},
                  {"forgetting": {"replay": 0.1}}, {"data": {"train": "x.jsonl", "packing": True}},
                  {"model": {"from": "reviews@champion"}},
                  {"data": {"train": "x.jsonl", "mix": [{"name": "b", "train": "y.jsonl"}]}}]:
        assert _classification_recipe(**budget, **extra).objective.name == "sft", extra
    # an objective the recipe names (or one with keys only sft has) is kept
    assert _classification_recipe(**budget, objective={"name": "sft"}).objective.name == "sft"
    assert _classification_recipe(**budget, objective={"neftune_alpha": 5}).objective.name == "sft"
    # keys only the head has (a section or an override without a name): the head, with them
    probe = _classification_recipe(**budget, objective={"probe_examples": 256}).objective
    assert (probe.name, probe.probe_examples) == ("classification", 256)
    assert _classification_recipe(**budget, export={"gguf": [], "merged": False}).objective.name == "classification"
    # a run's saved recipe names its objective: reloading it keeps what was trained
    dumped = _classification_recipe(**budget).model_dump(mode="json", by_alias=True)
    assert load_recipe(dumped).objective.name == "classification"


def _chat_rows(n: int, answer) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Route the message: billing, bug or other."},
                          {"role": "user", "content": f"message {i} about {['money', 'crash', 'hello'][i % 3]}"},
                          {"role": "assistant", "content": answer(i)}]} for i in range(n)]


def test_chat_data_whose_answers_are_labels_trains_the_head_on_them(tmp_path, tokenizer):
    path = tmp_path / "route.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(60, lambda i: ["billing", "bug", "other"][i % 3])))
    recipe = load_recipe({"task": "classification", "objective": {"name": "classification"},
                          "data": {"train": str(path), "max_length": 64, "clean": {"near_dedup": False}}})
    splits, _ = build_splits(recipe)
    obj = objectives.from_recipe(recipe)
    items, _ = obj.build(splits, tokenizer, recipe)
    assert obj.labels == ["billing", "bug", "other"]
    train = splits["train"]
    assert [obj.labels[i.label] for i in items["train"]] == [ex.reference for ex in train]
    # the prompt is the conversation before the answer, with the generation prompt
    prompt = tokenizer.decode(items["train"][0].input_ids)
    assert train[0].messages[1]["content"] in prompt and train[0].reference not in prompt.split("message")[-1]
    result = obj.evaluate(make_model(tokenizer), tokenizer, splits["test"], [], recipe, which="base")
    assert [p["reference"] for p in result["predictions"]] == [ex.reference for ex in splits["test"]]


def test_a_head_on_chat_data_with_free_text_answers_is_refused_before_the_run_folder(tmp_path, tiny_model_dir):
    from tunesmith import pipeline
    path = tmp_path / "free.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(40, lambda i: f"a long answer number {i}")))
    recipe = {"task": "classification", "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
              "objective": {"name": "classification"},
              "data": {"train": str(path), "max_length": 64, "clean": {"near_dedup": False}}}
    with pytest.raises(TunesmithError, match="needs a label per example.*40 distinct.*objective.name: sft"):
        pipeline.prepare(recipe)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_fitted_start_is_validated_first_and_kept_when_training_does_not_beat_it(tmp_path, tokenizer):
    """A head started from a probe is a candidate before the first step (an eval row at step 0); training that
    only makes validation worse (a learning rate far too high) ends with the probe's head kept, best step 0.
    Without a fitted start (``head_init: random``) there is no step-0 validation."""
    from tunesmith.rundir import read_jsonl
    from tunesmith.tuned import prepare_for_training
    for init in ("probe", "random"):
        (tmp_path / init).mkdir()
        recipe = make_recipe(tmp_path / init, name="freeze", top_k_layers=0)
        recipe.objective.head_init = init
        recipe.train.lr, recipe.train.epochs, recipe.train.eval_every = 0.9, 1, 4
        splits, _ = build_splits(recipe)
        obj = objectives.from_recipe(recipe)
        items, _ = obj.build(splits, tokenizer, recipe)
        model = prepare_for_training(make_model(tokenizer), methods.get("freeze"), obj, recipe, tokenizer, seqs=items)
        start = obj.head(model).weight.detach().clone()
        result = train(model, items["train"], items["validation"], obj, recipe.train, tmp_path / init / "run",
                       pad_id=tokenizer.pad_token_id)
        evals = [r for r in read_jsonl(tmp_path / init / "run" / "metrics.jsonl") if r["type"] == "eval"]
        if init == "probe":
            assert obj.fitted_start and evals[0]["step"] == 0
            assert min(r["val_loss"] for r in evals[1:]) > evals[0]["val_loss"]     # training only hurt
            assert result.best_step == 0
            assert torch.equal(obj.head(model).weight.detach(), start)              # the probe's head kept
        else:
            assert not obj.fitted_start and evals[0]["step"] > 0
