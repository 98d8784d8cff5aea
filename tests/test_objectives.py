"""SFT objective: label smoothing matches torch's definition; NEFTune noise only while training; a shared prompt
runs once per batch with the same loss and gradients."""
import torch
import torch.nn.functional as F

from tiny import make_model
from tunesmith.config import load_recipe
from tunesmith.data.example import Example
from tunesmith.data.tokenize import IGNORE, collate, tokenize_all
from tunesmith.objectives import from_recipe
from tunesmith.objectives.sft import SFTObjective


def batch_for(tokenizer):
    exs = [Example(messages=[{"role": "user", "content": "the movie"}, {"role": "assistant", "content": w}])
           for w in ["great fun", "bland"]]
    seqs, _ = tokenize_all(exs, tokenizer, 64)
    return collate(seqs, tokenizer.pad_token_id)


def test_selective_projection_equals_full_logits_loss(tokenizer):
    model, batch = make_model(tokenizer), batch_for(tokenizer)
    with torch.no_grad():
        out = SFTObjective(label_smoothing=0.1)(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                              ignore_index=IGNORE, reduction="sum", label_smoothing=0.1)
    assert torch.allclose(out.loss_sum, ref, rtol=1e-5)
    assert out.count == batch["n_loss"]


def test_neftune_adds_noise_only_in_training_mode(tokenizer):
    model, batch = make_model(tokenizer), batch_for(tokenizer)
    plain, noisy = SFTObjective(), SFTObjective(neftune_alpha=5.0)
    with torch.no_grad():
        model.eval()
        assert torch.equal(plain(model, batch).loss_sum, noisy(model, batch).loss_sum)
        model.train()
        torch.manual_seed(0)
        a = noisy(model, batch).loss_sum
        b = noisy(model, batch).loss_sum
    assert not torch.equal(a, b)     # fresh noise every step


def test_recipe_configures_the_objective(tmp_path):
    r = load_recipe({"data": {"train": "x.jsonl"}, "objective": {"label_smoothing": 0.2, "neftune_alpha": 5}})
    obj = from_recipe(r)
    assert obj.label_smoothing == 0.2 and obj.neftune_alpha == 5


def shared_prompt_batch(tokenizer, system: str = "You sort short reviews. " * 12):
    exs = [Example(messages=[{"role": "system", "content": system}, {"role": "user", "content": u},
                             {"role": "assistant", "content": a}])
           for u, a in [("the movie was fun", "great fun"), ("dull", "bland"), ("a long and winding tale", "ok")]]
    seqs, _ = tokenize_all(exs, tokenizer, 256)
    return collate(seqs, tokenizer.pad_token_id)


def test_a_shared_prompt_runs_once_with_the_same_loss_and_gradients(tokenizer):
    from peft import LoraConfig, get_peft_model

    from tunesmith.objectives import sft
    batch = shared_prompt_batch(tokenizer)
    start = sft.shared_prefix(batch)
    assert start >= sft.SHARED_PREFIX_MIN
    assert (batch["input_ids"][:, :start + 1] == batch["input_ids"][:1, :start + 1]).all()
    assert (batch["labels"][:, :start + 2] == IGNORE).all()      # nothing trained is predicted in the prefix
    model = get_peft_model(make_model(tokenizer), LoraConfig(r=4, target_modules="all-linear",
                                                             init_lora_weights=False)).train()

    def loss_and_grads():
        model.zero_grad()
        out = SFTObjective()(model, batch)
        out.loss_sum.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    calls = []
    backbone = model.get_base_model().get_decoder()
    hook = backbone.register_forward_pre_hook(lambda _m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    shared, grads = loss_and_grads()
    hook.remove()
    assert calls == [(1, start), (3, batch["input_ids"].shape[1] - start)]    # the prompt once, then each row
    old, sft.SHARED_PREFIX_MIN = sft.SHARED_PREFIX_MIN, 10**9            # every row runs its whole prompt
    try:
        full, ref = loss_and_grads()
    finally:
        sft.SHARED_PREFIX_MIN = old
    assert shared.count == full.count == batch["n_loss"]
    assert torch.allclose(shared.loss_sum, full.loss_sum, rtol=1e-5)
    assert max((grads[k] - ref[k]).abs().max().item() for k in ref) < 1e-5 * max(r.abs().max().item() for r in ref.values())


def test_no_shared_prompt_when_rows_differ_early_or_a_row_stands_alone(tokenizer):
    from tunesmith.objectives.sft import shared_prefix
    assert shared_prefix(batch_for(tokenizer)) == 0                  # a few shared tokens: not worth a call
    one = shared_prompt_batch(tokenizer)
    assert shared_prefix({k: v[:1] if hasattr(v, "shape") else v for k, v in one.items()}) == 0
    packed = dict(one)
    packed["position_ids"] = packed.pop("attention_mask")            # packed rows: no padding mask
    assert shared_prefix(packed) == 0
    assert shared_prefix(one) > 0
