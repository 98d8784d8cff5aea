"""The contract every fine-tuning method plug-in passes: one suite, parametrised over the registry.

Adding a method = registering it in ``tunesmith.methods.METHODS`` + adding its row to ``TABLE``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.config import METHOD_NAMES, MethodConfig, TrainConfig
from tunesmith.data.example import Example
from tunesmith.data.tokenize import tokenize_all
from tunesmith.errors import TunesmithError
from tunesmith.methods import METHODS, get
from tunesmith.methods.base import count_trainable, trainable_state
from tunesmith.objectives.sft import SFTObjective
from tunesmith.train.loop import evaluate_loss, train

# tiny llama: hidden, intermediate, layers, kv width (2 KV heads x 16)
H, I, L, KV = 64, 128, 2, 32
# (in, out) of each block projection
PROJ = {"q_proj": (H, H), "k_proj": (H, KV), "v_proj": (H, KV), "o_proj": (H, H),
        "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}
BLOCK = sum(i * o for i, o in PROJ.values()) + 2 * H      # a block's weights (+ its two RMSNorms)
LORA = L * 4 * sum(i + o for i, o in PROJ.values())        # r = 4 on every projection
OUTS = sum(o for _, o in PROJ.values())                     # one bias / magnitude entry per output


def nothing(name: str) -> bool:
    return False


@dataclass
class Row:
    lr: float
    trainable: Callable[[int], int]              # vocab size -> trainable parameter count
    mergeable: bool
    has_adapter: bool
    cfg: dict = field(default_factory=dict)      # MethodConfig fields beyond the shared ones
    base_changes: Callable[[str], bool] = nothing   # base parameters (by base name) training changes
    starts_unchanged: bool = True                # apply() alone leaves the model's outputs as they were


TABLE: dict[str, Row] = {
    "full": Row(1e-3, lambda v: 2 * v * H + L * BLOCK + H, True, False, base_changes=lambda n: True),
    "freeze": Row(1e-3, lambda v: BLOCK + H + v * H, True, False, {"top_k_layers": 1},
                  lambda n: ".layers.1." in n or n in ("model.norm.weight", "lm_head.weight")),
    "lora": Row(1e-2, lambda v: LORA, True, True),
    "dora": Row(1e-2, lambda v: LORA + L * OUTS, True, True),
    "rslora": Row(1e-2, lambda v: LORA, True, True),
    "ia3": Row(5e-2, lambda v: L * (KV + KV + I), True, True),             # k/v outputs, down_proj input
    "prompt_tuning": Row(5e-2, lambda v: 8 * H, False, True,
                         {"num_virtual_tokens": 8, "prompt_init_text": "positive or negative"},
                         starts_unchanged=False),
    "prefix_tuning": Row(5e-2, lambda v: 8 * L * 2 * KV, False, True, {"num_virtual_tokens": 8},
                         starts_unchanged=False),
    "adapter": Row(1e-2, lambda v: L * 2 * (H * 8 + 8 + 8 * H + H), False, True, {"adapter_size": 8}),
    "bitfit": Row(5e-2, lambda v: L * (OUTS + 2 * H) + H, True, False, base_changes=lambda n: "norm" in n),
    "sparse": Row(1e-2, lambda v: L * sum(max(1, round(0.05 * i * o)) for i, o in PROJ.values()), True, True,
                  {"sparse_fraction": 0.05, "sparse_selection": "gradient"}),
}

STEPS, STOP_AT = 30, 13


def method_config(name: str) -> MethodConfig:
    return MethodConfig(name=name, r=4, alpha=8, dropout=0.0, **TABLE[name].cfg)


def train_config(name: str) -> TrainConfig:
    # weight decay on: frozen weights must stay bit-identical even so
    return TrainConfig(max_steps=STEPS, epochs=8, batch_size=4, lr=TABLE[name].lr, warmup_ratio=0,
                       scheduler="constant", weight_decay=0.01, save_every=10, eval_every=1000,
                       early_stopping_patience=None, device="cpu")


@pytest.fixture(scope="module")
def seqs(tokenizer):
    """The reply is decided by the review's word: learnable in a few dozen steps."""
    words = [("wonderful", "great"), ("cold", "bland"), ("enjoy", "great"), ("lazy", "bland")]
    exs = [Example(messages=[{"role": "user", "content": f"the movie was {w} {i}"},
                             {"role": "assistant", "content": reply}])
           for i in range(16) for w, reply in [words[i % 4]]]
    return tokenize_all(exs, tokenizer, 64)[0]


def build_base(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def calibration_for(seqs, pad_id):
    def loss(model):
        out = SFTObjective()(model, SFTObjective.collate(seqs[:4], pad_id))
        return out.loss_sum / out.count
    return loss


def fresh_tuned(name, tiny_model_dir, seqs, pad_id):
    torch.manual_seed(0)     # random adapter inits (LoRA A, prefixes, ...) come from the global RNG
    return get(name).apply(build_base(tiny_model_dir), method_config(name),
                           calibration=calibration_for(seqs, pad_id))


def base_view(named, reference_names: set[str]) -> tuple[dict, dict]:
    """Split named tensors of a tuned model into base weights (renamed to the plain model's names,
    through peft prefixes, peft layer wrappers, adapter wrappers, parametrizations) and method-owned ones."""
    base, own = {}, {}
    for n, p in named:
        plain = (n.replace(".base_layer.", ".").replace(".linear.", ".")
                 .replace(".parametrizations.weight.original", ".weight"))
        for cand in (plain, plain.removeprefix("base_model.model."), plain.removeprefix("base_model.")):
            if cand in reference_names:
                base[cand] = p.detach()
                break
        else:
            own[n] = p.detach()
    return base, own


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, tokenizer, tiny_model_dir, seqs, tmp_path_factory):
    """Each method applied to the tiny model and trained STEPS steps, with its before/after state."""
    name = request.param
    pad = tokenizer.pad_token_id
    reference = build_base(tiny_model_dir)
    names = {n for n, _ in reference.named_parameters()}
    model = fresh_tuned(name, tiny_model_dir, seqs, pad)
    count = count_trainable(model)[0]
    ids = torch.tensor([s.input_ids[:20] for s in seqs[:2]])
    at_init = logits(model, ids) if TABLE[name].starts_unchanged else None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss0 = evaluate_loss(model, seqs, SFTObjective(), batch_size=8, pad_id=pad)["val_loss"]
    run_dir = tmp_path_factory.mktemp(f"run-{name}")
    train(model, seqs, [], SFTObjective(), train_config(name), run_dir, pad_id=pad)
    model.eval()
    loss1 = evaluate_loss(model, seqs, SFTObjective(), batch_size=8, pad_id=pad)["val_loss"]
    return SimpleNamespace(name=name, row=TABLE[name], method=get(name), model=model, count=count, ids=ids,
                           at_init=at_init, before=before, loss0=loss0, loss1=loss1, reference=reference,
                           names=names)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_every_recipe_method_is_registered_and_has_a_row():
    assert set(METHODS) == set(METHOD_NAMES) == set(TABLE)


def test_declares_mergeable_and_adapter(trained):
    assert trained.method.mergeable is trained.row.mergeable
    assert trained.method.has_adapter is trained.row.has_adapter


def test_apply_alone_leaves_outputs_unchanged(trained):
    if not trained.row.starts_unchanged:
        pytest.skip(f"{trained.name} changes the outputs from the start (virtual tokens), by design")
    assert torch.equal(trained.at_init, logits(trained.reference, trained.ids))


def test_loss_decreases_on_a_learnable_task(trained):
    assert math.isfinite(trained.loss1)
    assert trained.loss1 < 0.6 * trained.loss0, (trained.loss0, trained.loss1)


def test_trainable_count_matches_the_arithmetic(trained, tokenizer):
    assert trained.count == trained.row.trainable(len(tokenizer))


def test_only_intended_parameters_change(trained):
    before_base, before_own = base_view(trained.before.items(), trained.names)
    after_base, after_own = base_view(trained.model.named_parameters(), trained.names)
    assert set(before_base) == set(after_base) == trained.names      # no base weight lost or renamed
    for n in trained.names:
        changed = not torch.equal(before_base[n], after_base[n])
        assert changed == trained.row.base_changes(n), f"{n}: changed={changed}"
    params = dict(trained.model.named_parameters())
    for n, t in after_own.items():     # everything the method added trains, and moved
        assert params[n].requires_grad and not torch.equal(before_own[n], t), n
    for n, p in params.items():        # frozen means bit-identical
        if not p.requires_grad:
            assert torch.equal(trained.before[n], p.detach()), n


def test_save_load_on_a_fresh_base_gives_identical_outputs(trained, tiny_model_dir, tmp_path):
    trained.method.save(trained.model, tmp_path / "saved")
    loaded = trained.method.load(build_base(tiny_model_dir), tmp_path / "saved", method_config(trained.name))
    assert torch.equal(logits(loaded.eval(), trained.ids), logits(trained.model, trained.ids))
    assert not torch.equal(logits(trained.reference, trained.ids)[:, -2:], logits(loaded, trained.ids)[:, -2:])


def test_merge_parity(trained, tiny_model_dir, tmp_path):
    trained.method.save(trained.model, tmp_path / "saved")
    loaded = trained.method.load(build_base(tiny_model_dir), tmp_path / "saved", method_config(trained.name))
    if not trained.row.mergeable:
        with pytest.raises(TunesmithError, match="cannot be merged"):
            trained.method.merge(loaded)
        return
    expected = logits(trained.model, trained.ids)
    merged = trained.method.merge(loaded).eval()
    plain = type(merged)(merged.config)         # what transformers builds from the config alone
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert set(merged.state_dict()) == set(plain.state_dict())
    assert torch.allclose(logits(merged, trained.ids), expected, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert torch.allclose(logits(reloaded, trained.ids), expected, atol=1e-5)


def test_resume_reaches_the_same_state(trained, tokenizer, tiny_model_dir, seqs, tmp_path):
    pad, cfg = tokenizer.pad_token_id, train_config(trained.name)
    first = fresh_tuned(trained.name, tiny_model_dir, seqs, pad)
    result = train(first, seqs, [], SFTObjective(), cfg, tmp_path, pad_id=pad, stop_after=STOP_AT)
    assert result.steps == STOP_AT
    second = fresh_tuned(trained.name, tiny_model_dir, seqs, pad)    # a new process, as it were
    result = train(second, seqs, [], SFTObjective(), cfg, tmp_path, pad_id=pad, resume=True)
    assert result.steps == STEPS
    expected, got = trainable_state(trained.model), trainable_state(second)
    assert expected.keys() == got.keys()
    for n in expected:
        assert torch.equal(expected[n], got[n]), n
