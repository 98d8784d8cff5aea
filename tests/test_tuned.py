"""Every command sees the same tuned model: training, advise, eval, chat, verify and the server all go
through tunesmith.tuned, for every method x {sft, classification} on the tiny model."""
from __future__ import annotations

import functools
import io

import pytest
import torch

from tunesmith import methods, models, objectives, pipeline
from tunesmith.advise import time_training
from tunesmith.chat import chat, load_for_chat
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.methods.base import count_trainable
from tunesmith.serve import ServeSettings
from tunesmith.serve.registry import Registry, RunsSource, SharedRunner
from tunesmith.session import Session
from tunesmith.tuned import prepare_for_training

METHOD_KEYS = {"prompt_tuning": ["method.num_virtual_tokens=4"], "prefix_tuning": ["method.num_virtual_tokens=4"],
               "freeze": ["method.top_k_layers=1"], "sparse": ["method.sparse_fraction=0.05"],
               "adapter": ["method.adapter_size=8"]}


def _overrides(method: str, objective: str) -> list[str]:
    base = ["method.name=" + method, "objective.name=" + objective, "train.max_steps=1", "train.eval_every=100",
            "eval.baselines=[]", "forgetting.general_text=null", "forgetting.general_prompts=null",
            "export.check_parity=false", "export.verify=false"]
    if method in ("lora", "dora", "rslora"):
        base += ["method.r=4", "method.alpha=8"]
    return base + METHOD_KEYS.get(method, [])


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory, tiny_model_dir):
    import json

    import yaml

    from tiny import sentiment_rows
    d = tmp_path_factory.mktemp("tuned")
    data = d / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(40)))
    recipe = {"name": "tuned", "task": "classification", "objective": {"name": "sft"}, "output_dir": str(d / "runs"),
              "model": {"name": str(tiny_model_dir)},
              "data": {"train": str(data), "format": "labelled", "labels": {"0": "negative", "1": "positive"},
                       "instruction": "Is this positive or negative?", "max_length": 48,
                       "clean": {"near_dedup": False}},
              "train": {"batch_size": 4, "lr": 1e-2},
              "eval": {"max_new_tokens": 3, "batch_size": 8, "embedding_model": "tfidf", "max_examples": 4},
              "tracking": {"mlflow": False}}
    path = d / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("objective", ["sft", "classification"])
@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_consumer_sees_the_trained_model(recipe_path, method, objective):
    overrides = _overrides(method, objective)
    recipe = load_recipe(recipe_path, overrides)
    try:
        run, _ = pipeline.train(recipe)
    except TunesmithError as e:
        pytest.skip(f"{method} x {objective} is refused with a clear error: {e}")
    trained = run.load_json("train.json")["trainable_parameters"]

    # advise times the same trainable model the pipeline trains (label head included)
    session = Session(run)
    tok = session.tokenizer
    probe = time_training(recipe, session.base_model, tok, session.objective, session.seqs["train"], steps=1)
    assert probe["trainable_parameters"] == trained

    # the model as evaluated (pipeline/session) and as every other command loads it
    evaluated = session.load_tuned()
    ids = torch.tensor([tok("Is this positive or negative? great film", add_special_tokens=False)["input_ids"]])
    reference = _logits(evaluated, ids)
    if not objectives.OBJECTIVES[objective].generates_text:
        with pytest.raises(TunesmithError, match="own head"):
            load_for_chat(run.path)               # no text model: `tunesmith chat` and the server use the head
        info = Registry(ServeSettings(model=recipe.model.name, api_keys=[]), sources=[RunsSource([run.path])])\
            .get(run.path.name)
        assert info.kind == "classifier"
        out = io.StringIO()
        chat(run.path, stdin=io.StringIO("great film\n/exit\n"), stdout=out)
        label = out.getvalue().split("label> ")[1].split(" (")[0]
        assert label in session.objective.labels
        return
    chat_model, _, _ = load_for_chat(run.path)          # no merged export yet: adapter/weights on base
    assert torch.equal(_logits(chat_model, ids), reference)       # also what verify loads (load_tuned)
    registry = Registry(ServeSettings(model=recipe.model.name, api_keys=[]), sources=[RunsSource([run.path])])
    info = registry.get(run.path.name)
    if info.refusal():
        assert methods.get(method).virtual_tokens, info.reason      # virtual tokens: refused, saying why
        return
    runner = registry.acquire(run.path.name)
    if isinstance(runner, SharedRunner):      # a LoRA on the shared base: its rows name their adapter
        name = registry.adapter_name(run.path.name)
        served = functools.partial(registry.peft, adapter_names=[name] * ids.shape[0])
        assert torch.allclose(_logits(served, ids), reference, atol=1e-5)
        return
    with runner.context():
        assert torch.allclose(_logits(runner.model, ids), reference, atol=1e-5)


def test_prepare_for_training_keeps_a_new_label_head_trainable(recipe_path):
    recipe = load_recipe(recipe_path, _overrides("lora", "classification"))
    run = pipeline.prepare(recipe)
    model, tok = models.load(recipe.model.name)
    objective = objectives.from_recipe(recipe)
    objective.build(Session(run).splits, tok, recipe)      # the head learns its label set from the data
    prepared = prepare_for_training(model, methods.get("lora"), objective, recipe, tok)
    head = [n for n, p in prepared.named_parameters() if p.requires_grad and "lora_" not in n]
    assert head, "the classification head must stay trainable whatever the method froze"
    trainable, _ = count_trainable(prepared)
    assert trainable == sum(p.numel() for n, p in prepared.named_parameters() if p.requires_grad)
