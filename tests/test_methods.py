"""Method plug-ins: trainable-parameter arithmetic, only intended weights change, save/load, merge parity."""
import pytest
import torch

from tiny import make_model
from tunesmith.config import MethodConfig, TrainConfig
from tunesmith.data.example import Example
from tunesmith.data.tokenize import tokenize_all
from tunesmith.methods import METHODS, get
from tunesmith.methods.base import count_trainable
from tunesmith.objectives.sft import SFTObjective
from tunesmith.train.loop import train

H, I, L, KV = 64, 128, 2, 32   # tiny llama: hidden, intermediate, layers, kv dim (2 heads x 16)


def expected_trainable(name, model, r=4, top_k=1):
    if name == "lora":
        per_layer = r * ((H + H) + (H + KV) + (H + KV) + (H + H) + (H + I) + (H + I) + (I + H))
        return L * per_layer
    if name == "full":
        return sum(p.numel() for p in model.parameters())
    if name == "freeze":   # top block + final norm; the head is tied to embeddings? not in the tiny model
        block = sum(p.numel() for n, p in model.named_parameters() if ".layers.1." in n)
        return block + H + model.lm_head.weight.numel()


@pytest.fixture
def seqs(tokenizer):
    exs = [Example(messages=[{"role": "user", "content": f"the movie {i}"},
                             {"role": "assistant", "content": "great" if i % 2 else "bland"}]) for i in range(16)]
    return tokenize_all(exs, tokenizer, 64)[0]


def prepared(name, tokenizer):
    base = make_model(tokenizer)
    return get(name).apply(base, MethodConfig(name=name, r=4, alpha=8, dropout=0.0, top_k_layers=1))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_trainable_parameter_count_matches_the_arithmetic(name, tokenizer):
    model = prepared(name, tokenizer)
    reference = make_model(tokenizer)
    assert count_trainable(model)[0] == expected_trainable(name, reference)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_only_intended_parameters_change(name, tokenizer, seqs, tmp_path):
    model = prepared(name, tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, seqs, [], SFTObjective(), TrainConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_ratio=0),
          tmp_path, pad_id=tokenizer.pad_token_id)
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if p.requires_grad and name != "lora":
            assert changed, n
        if not p.requires_grad:
            assert not changed, f"{n} is frozen but changed"
    if name == "lora":   # lora_B starts at zero and must have moved
        assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_save_load_gives_identical_outputs_and_merge_is_equivalent(name, tokenizer, seqs, tmp_path):
    method = get(name)
    model = prepared(name, tokenizer)
    train(model, seqs, [], SFTObjective(), TrainConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_ratio=0),
          tmp_path / "run", pad_id=tokenizer.pad_token_id)
    model.eval()
    ids = torch.tensor([seqs[0].input_ids])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    method.save(model, tmp_path / "saved")
    reloaded = method.load(make_model(tokenizer), tmp_path / "saved", MethodConfig(name=name, r=4, alpha=8,
                                                                                   top_k_layers=1)).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
        merged = method.merge(reloaded)
        assert type(merged).__name__ == "LlamaForCausalLM"
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
