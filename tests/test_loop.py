"""The training loop: learning, token-weighted accumulation, resume parity, early stopping, metrics."""
import json

import pytest
import torch

from tiny import make_model
from tunesmith.config import MethodConfig, TrainConfig
from tunesmith.data.example import Example
from tunesmith.data.tokenize import tokenize_all
from tunesmith.methods import get
from tunesmith.methods.base import trainable_state
from tunesmith.objectives.sft import SFTObjective
from tunesmith.train.loop import evaluate_loss, train


@pytest.fixture
def data(tokenizer):
    words = ["great", "bland", "wonderful", "cold"]
    exs = [Example(messages=[{"role": "user", "content": f"review {i}: the movie was {words[i % 4]}"},
                             {"role": "assistant", "content": "positive" if i % 2 == 0 else "negative"}])
           for i in range(48)]
    seqs, _ = tokenize_all(exs, tokenizer, 64)
    return seqs[:40], seqs[40:]


def lora_model(tokenizer, seed=0):
    return get("lora").apply(make_model(tokenizer, seed), MethodConfig(r=4, alpha=8, dropout=0.1))


def cfg(**kw):
    base = dict(epochs=3, batch_size=4, lr=5e-3, eval_every=5, save_every=4, early_stopping_patience=None,
                seed=0, threads=1)
    return TrainConfig(**{**base, **kw})


def test_loss_goes_down_and_metrics_are_logged(tokenizer, data, tmp_path):
    train_seqs, val = data
    model = lora_model(tokenizer)
    before = evaluate_loss(model, val, SFTObjective(), batch_size=8, pad_id=tokenizer.pad_token_id)["val_loss"]
    res = train(model, train_seqs, val, SFTObjective(), cfg(), tmp_path, pad_id=tokenizer.pad_token_id)
    after = evaluate_loss(model, val, SFTObjective(), batch_size=8, pad_id=tokenizer.pad_token_id)["val_loss"]
    assert after < before - 1.0
    assert res.steps == 30 and res.tokens > 0 and res.tokens_per_s > 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 31))
    assert {r["step"] for r in records if r["type"] == "eval"} == {5, 10, 15, 20, 25, 30}
    assert all({"loss", "lr", "tokens_per_s", "grad_norm"} <= r.keys() for r in records if r["type"] == "train")


def test_gradient_accumulation_matches_a_bigger_batch(tokenizer, data, tmp_path):
    train_seqs, _ = data
    m1, m2 = lora_model(tokenizer), lora_model(tokenizer)
    for m in (m1, m2):   # dropout off so both see identical computations
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    train(m1, train_seqs[:8], [], SFTObjective(), cfg(batch_size=8, grad_accum=1, max_steps=1),
          tmp_path / "a", pad_id=tokenizer.pad_token_id)
    # 2 x 4 with the same examples: plan order differs, so compare against the same first 8 examples
    train(m2, train_seqs[:8], [], SFTObjective(), cfg(batch_size=4, grad_accum=2, max_steps=1),
          tmp_path / "b", pad_id=tokenizer.pad_token_id)
    s1, s2 = trainable_state(m1), trainable_state(m2)
    assert all(torch.allclose(s1[k], s2[k], atol=1e-6) for k in s1)


def test_resume_reaches_the_same_result_as_an_uninterrupted_run(tokenizer, data, tmp_path):
    train_seqs, val = data
    full = lora_model(tokenizer)
    r_full = train(full, train_seqs, val, SFTObjective(), cfg(), tmp_path / "full", pad_id=tokenizer.pad_token_id)

    part = lora_model(tokenizer)
    r_part = train(part, train_seqs, val, SFTObjective(), cfg(), tmp_path / "part",
                   pad_id=tokenizer.pad_token_id, stop_after=10)
    assert r_part.steps == 10
    # a new process would build a fresh model: do the same, then resume from step 8's checkpoint
    resumed = lora_model(tokenizer, seed=0)
    r_res = train(resumed, train_seqs, val, SFTObjective(), cfg(), tmp_path / "part",
                  pad_id=tokenizer.pad_token_id, resume=True)
    assert r_res.steps == r_full.steps
    assert r_res.final_train_loss == pytest.approx(r_full.final_train_loss, rel=1e-5)
    a, b = trainable_state(full), trainable_state(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == list(range(1, 31))   # replayed steps are not logged twice


def test_early_stopping_keeps_the_best_checkpoint(tokenizer, data, tmp_path):
    train_seqs, val = data
    model = lora_model(tokenizer)
    # a huge learning rate makes validation loss blow up after the first evaluation
    res = train(model, train_seqs, val, SFTObjective(), cfg(lr=0.9, eval_every=1, early_stopping_patience=2,
                                                             max_grad_norm=None, warmup_ratio=0.0),
                tmp_path, pad_id=tokenizer.pad_token_id)
    assert res.early_stopped and res.steps < 30
    evals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "eval"]
    best = min(evals, key=lambda e: e["val_loss"])
    assert res.best_step == best["step"]
    final = evaluate_loss(model, val, SFTObjective(), batch_size=8, pad_id=tokenizer.pad_token_id)["val_loss"]
    assert final == pytest.approx(best["val_loss"], rel=1e-4)   # best weights restored


def test_checkpoints_are_complete_and_pruned(tokenizer, data, tmp_path):
    train_seqs, val = data
    train(lora_model(tokenizer), train_seqs, val, SFTObjective(), cfg(), tmp_path, pad_id=tokenizer.pad_token_id)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000028", "step-000030"]
    for name in ckpts:
        assert {"trainable.safetensors", "optimizer.pt", "state.json"} <= {
            p.name for p in (tmp_path / "checkpoints" / name).iterdir()}
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_gradient_checkpointing_gives_the_same_updates(tokenizer, data, tmp_path):
    train_seqs, _ = data
    plain, ckpt = lora_model(tokenizer), lora_model(tokenizer)
    for m in (plain, ckpt):
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    r1 = train(plain, train_seqs, [], SFTObjective(), cfg(max_steps=3), tmp_path / "a", pad_id=tokenizer.pad_token_id)
    r2 = train(ckpt, train_seqs, [], SFTObjective(), cfg(max_steps=3, gradient_checkpointing=True), tmp_path / "b",
               pad_id=tokenizer.pad_token_id)
    assert r1.final_train_loss == pytest.approx(r2.final_train_loss, rel=1e-5)
    a, b = trainable_state(plain), trainable_state(ckpt)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
