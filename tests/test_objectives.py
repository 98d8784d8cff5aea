"""SFT objective options: label smoothing matches torch's definition; NEFTune noise only while training."""
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
