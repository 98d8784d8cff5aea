"""The contract every objective passes: one suite, parametrised over the registry.

Adding an objective = registering it in ``tunesmith.objectives.OBJECTIVES`` + adding its row to ``TABLE``
(the recipe sections and data it trains on).
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from tiny import sentiment_rows
from tunesmith import objectives, pipeline
from tunesmith.eval import stage
from tunesmith.objectives.base import hook
from tunesmith.session import Session
from tunesmith.tuned import load_tuned, prepare_for_training


def _labelled(path):
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(48)))
    return {"train": str(path), "format": "labelled", "labels": {"0": "negative", "1": "positive"},
            "instruction": "Is this positive or negative?"}


def _pairs(path):
    rows = [{"input": {"messages": [{"role": "user", "content": f"How was visit number {i} to the museum?"}]},
             "preferred_output": [{"role": "assistant", "content": "It was calm and bright."}],
             "non_preferred_output": [{"role": "assistant", "content": "It was loud."}]} for i in range(48)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"train": str(path), "format": "auto"}


# name -> (task, objective section, data writer, metric keys its evaluation must report)
TABLE = {
    "sft": ("classification", {}, _labelled, {"accuracy"}),
    # from noise: the loss must fall by training (a probe's fitted start is validated first and kept when 12 steps
    # at this rate do not beat it; test_classification covers that path)
    "classification": ("classification", {"head_init": "random"}, _labelled, {"accuracy", "macro_f1"}),
    "dpo": ("preference", {"beta": 0.1}, _pairs, {"reward_accuracy", "logp_preference_accuracy"}),
    "orpo": ("preference", {}, _pairs, {"logp_preference_accuracy"}),
    "distill": ("classification", {"student": "half"}, _labelled, {"accuracy"}),
}


def test_the_table_covers_every_objective():
    assert set(TABLE) == set(objectives.OBJECTIVES)


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, initializer_range=0.1)
    path = tmp_path_factory.mktemp("deep") / "tiny-llama-4"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=sorted(TABLE))
def trained(request, tmp_path_factory, tiny_model_dir, deep_model):
    """One short training run per objective: the run, its session (built data) and the loss curve."""
    name = request.param
    task, section, write, _ = TABLE[name]
    d = tmp_path_factory.mktemp(name)
    recipe = {"name": name, "task": task, "output_dir": str(d / "runs"),
              "model": {"name": str(deep_model if name == "distill" else tiny_model_dir)},
              "data": {**write(d / "data.jsonl"), "max_length": 48, "clean": {"near_dedup": False}},
              "method": {"name": "lora", "r": 4, "alpha": 8},
              "objective": {"name": name, **section},
              "train": {"max_steps": 12, "epochs": 20, "batch_size": 4, "lr": 2e-2, "eval_every": 100, "save_every": 100,
                        "warmup_ratio": 0, "scheduler": "constant"},
              "eval": {"max_new_tokens": 3, "batch_size": 8, "embedding_model": "tfidf", "max_examples": 8,
                       "baselines": []},
              "forgetting": {"general_text": None, "general_prompts": None},
              "tracking": {"mlflow": False}}
    path = d / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run, _ = pipeline.train(str(path))
    session = Session(run)
    items = session.seqs["train"][:16]
    start = prepare_for_training(session.base_model, session.method, session.objective, run.recipe,
                                 session.tokenizer, calibration=session.calibration(), seqs=session.seqs)
    before = _loss(start, session, items)       # the model as training started (same seed, same init)
    after = _loss(load_tuned(run, "cpu", objective=session.objective)[0], session, items)
    session.base_model = None          # changed by prepare_for_training; the tests load the tuned model
    return name, run, session, (before, after)


def _loss(model, session, items) -> float:
    from tunesmith.train.loop import evaluate_loss
    return evaluate_loss(model, items, session.objective, batch_size=4, pad_id=session.tokenizer.pad_token_id,
                         device=torch.device("cpu"))["val_loss"]


def test_build_and_collate_give_batches_with_loss_units(trained):
    name, run, session, _ = trained
    assert session.seqs["train"] and session.seqs["test"], "every split it trains or evaluates on is built"
    assert all(item.length > 0 for item in session.seqs["train"])
    batch = session.objective.collate(session.seqs["train"][:3], session.tokenizer.pad_token_id)
    assert batch["n_tokens"] > 0 and batch["n_loss"] > 0
    tensors = [v for v in batch.values() if torch.is_tensor(v)]
    assert tensors and all(t.shape[0] in (3, 6) for t in tensors)   # rows, or chosen+rejected rows


def test_loss_goes_down(trained):
    name, run, _, (before, after) = trained
    assert len([r for r in run.metrics() if r.get("type") == "train"]) == 12
    assert after < before, f"{name}: training-set loss {before:.4f} -> {after:.4f}"


def test_save_and_load_are_exact(trained):
    """The saved run reloaded on a fresh base gives the same loss, bit for bit, as the model it saved."""
    name, run, session, _ = trained
    batch = session.objective.collate(session.seqs["test"][:4], session.tokenizer.pad_token_id)
    reloaded_a, _ = load_tuned(run, "cpu", objective=session.objective)
    reloaded_b, _ = load_tuned(run, "cpu")                    # a fresh objective learns what it needs
    with torch.no_grad():
        a = session.objective(reloaded_a, batch).loss_sum
        b = session.objective(reloaded_b, batch).loss_sum
    assert torch.isfinite(a) and torch.equal(a, b)
    if hook(session.objective, "load_meta"):
        fresh = objectives.from_recipe(run.recipe)
        fresh.load_meta(run.model_dir)
        assert getattr(fresh, "labels", None) == getattr(session.objective, "labels", None)


def test_evaluate_reports_its_metrics(trained):
    name, run, session, _ = trained
    model = session.load_tuned()
    result = stage.evaluate_split(session, model, "contract", "tuned")
    assert TABLE[name][3] <= set(result["metrics"]), result["metrics"]
    assert result["predictions"]


def test_objectives_describe_themselves():
    for name, cls in objectives.OBJECTIVES.items():
        for attr in ("generates_text", "compares_baselines", "trains_on_text", "own_model"):
            assert isinstance(getattr(cls, attr), bool), (name, attr)
