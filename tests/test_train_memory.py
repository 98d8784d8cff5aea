"""Memory savers of the training loop that must not change results: dropout keeping a bool mask."""
import pytest
import torch

from tiny import make_model, review_sequences
from tunesmith.config import MethodConfig, TrainConfig
from tunesmith.methods import get
from tunesmith.objectives.sft import SFTObjective
from tunesmith.train.dropout import LeanDropout, lean_dropout
from tunesmith.train.loop import train


def run_dropout(cls, x0, p=0.05):
    torch.manual_seed(3)
    x = x0.clone().requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t.dtype)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = cls(p).train()(x)
    (y.float() * torch.arange(x0.shape[-1])).sum().backward()
    return y.detach(), x.grad, saved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_dropout_draws_the_same_and_keeps_only_a_bool_mask(dtype):
    x0 = torch.randn(16, 96, dtype=dtype)
    y_ref, g_ref, saved_ref = run_dropout(torch.nn.Dropout, x0)
    y, g, saved = run_dropout(LeanDropout, x0)
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)       # bit for bit
    assert saved_ref == [dtype] and saved == [torch.bool]
    assert (y == 0).any() and (y != 0).any()


def test_lean_dropout_is_plain_dropout_in_eval_and_for_p_zero():
    x = torch.randn(4, 8)
    assert torch.equal(LeanDropout(0.5).eval()(x), x)
    assert torch.equal(LeanDropout(0.0).train()(x), x)


def test_the_loop_swaps_lora_dropout_while_training_and_puts_it_back(tokenizer, tmp_path):
    train_seqs, val = review_sequences(tokenizer)
    model = get("lora").apply(make_model(tokenizer, 0), MethodConfig(r=4, alpha=8, dropout=0.1))
    dropouts = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert dropouts
    seen = []
    cfg = TrainConfig(max_steps=2, batch_size=4, eval_every=100, save_every=100, early_stopping_patience=None,
                      threads=1)
    train(model, train_seqs, val, SFTObjective(), cfg, tmp_path / "run", pad_id=tokenizer.pad_token_id,
          on_step=lambda r: seen.append({type(m) for m in dropouts}))
    assert seen and all(s == {LeanDropout} for s in seen)
    assert all(type(m) is torch.nn.Dropout for m in dropouts)
    with pytest.raises(RuntimeError):
        with lean_dropout(model) as n:
            assert n == len(dropouts)
            raise RuntimeError
    assert all(type(m) is torch.nn.Dropout for m in dropouts)
