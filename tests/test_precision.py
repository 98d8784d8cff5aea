"""Training precision: the probe (measured once, cached), the auto choice, bf16 autocast training that tracks
fp32, fp32 trainable weights and optimizer state, merge parity and bit-exact resume under bf16."""
import json

import pytest
import torch

from tiny import review_sequences, make_model
from tunesmith.config import MethodConfig, TrainConfig
from tunesmith.data.example import Example
from tunesmith.data.tokenize import tokenize_all
from tunesmith.errors import TunesmithError
from tunesmith.export import check_parity
from tunesmith.generation import generate
from tunesmith.methods import get
from tunesmith.methods.base import trainable_state
from tunesmith.models import home
from tunesmith.objectives.sft import SFTObjective
from tunesmith.rundir import read_jsonl
from tunesmith.train import precision as prec
from tunesmith.train.loop import train

CPU = torch.device("cpu")
# bf16 keeps ~3 significant digits: per-step training loss of a bf16-autocast run stays within this
# relative distance of the fp32 run over the first 10 steps on the tiny model (measured: 0.2%)
LOSS_RTOL = 0.02


def bf16_usable() -> bool:
    return prec.numerics_check(CPU, torch.bfloat16) <= prec.MAX_REL_ERR


needs_bf16 = pytest.mark.skipif(not bf16_usable(), reason="bf16 autocast is not usable on this CPU")


@pytest.fixture(autouse=True)
def _unpinned(monkeypatch):
    monkeypatch.delenv(prec.ENV, raising=False)


@pytest.fixture
def data(tokenizer):
    return review_sequences(tokenizer)


def lora_model(tokenizer, dropout=0.1):
    return get("lora").apply(make_model(tokenizer, 0), MethodConfig(r=4, alpha=8, dropout=dropout))


def cfg(**kw):
    base = dict(epochs=2, batch_size=4, lr=5e-3, eval_every=4, save_every=3, early_stopping_patience=None,
                seed=0, threads=1)
    return TrainConfig(**{**base, **kw})


def fake_timer(speeds: dict, calls: list):
    def time_matmul(device, dtype, n=None, repeats=5):
        calls.append(dtype)
        return speeds[dtype]
    return time_matmul


def test_the_probe_is_cached_and_reused(monkeypatch):
    calls = []
    monkeypatch.setattr(prec, "time_matmul", fake_timer({torch.float32: 0.05, torch.bfloat16: 0.02}, calls))
    first = prec.probe(CPU, refresh=True)
    assert not first["cached"] and first["speedup"] == pytest.approx(2.5) and len(calls) == 2
    cache = json.loads((home() / prec.PROBE_FILE).read_text())
    assert prec.device_key(CPU) in cache["entries"]
    chosen = prec.choose("auto", CPU)           # read from the cache: no second timing
    assert len(calls) == 2
    assert chosen.used == "bf16" and chosen.requested == "auto"
    assert "2.5x fp32" in chosen.reason and "probe cached" in chosen.reason


def test_auto_stays_fp32_without_a_clear_speedup(monkeypatch):
    calls = []
    monkeypatch.setattr(prec, "time_matmul", fake_timer({torch.float32: 0.05, torch.bfloat16: 0.045}, calls))
    prec.probe(CPU, refresh=True)
    chosen = prec.choose("auto", CPU)
    assert chosen.used == "fp32" and "below the 1.3x needed" in chosen.reason


def test_explicit_choices_and_refusals(monkeypatch):
    monkeypatch.setattr(prec, "probe", lambda *a, **k: pytest.fail("explicit precision must not probe"))
    assert prec.choose("fp32", CPU).used == "fp32"
    assert prec.choose("bf16", CPU).used == "bf16"
    with pytest.raises(TunesmithError, match="fp16 needs a CUDA GPU") as e:
        prec.choose("fp16", CPU)
    assert e.value.field == "train.precision"
    monkeypatch.setenv(prec.ENV, "fp32")         # pins what auto means, not what a recipe asks for
    pinned = prec.choose("auto", CPU)
    assert pinned.used == "fp32" and prec.ENV in pinned.reason
    assert prec.choose("bf16", CPU).used == "bf16"


@needs_bf16
def test_bf16_loss_curve_tracks_fp32_and_weights_stay_fp32(tokenizer, data, tmp_path):
    train_seqs, val = data
    losses, results = {}, {}
    for p in ("fp32", "bf16"):
        model = lora_model(tokenizer)
        results[p] = train(model, train_seqs, val, SFTObjective(), cfg(precision=p, max_steps=10), tmp_path / p,
                           pad_id=tokenizer.pad_token_id)
        losses[p] = [r["loss"] for r in read_jsonl(tmp_path / p / "metrics.jsonl") if r["type"] == "train"]
        trainable = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
        assert trainable and all(q.dtype == torch.float32 for _, q in trainable)
        assert all(q.grad is None or q.grad.dtype == torch.float32 for _, q in trainable)
    assert {k: results["bf16"].precision[k] for k in ("used", "requested", "reason")} == \
        {"used": "bf16", "requested": "bf16", "reason": "requested"}
    assert len(losses["fp32"]) == len(losses["bf16"]) == 10
    assert losses["fp32"] != losses["bf16"]      # the autocast really ran in lower precision
    for a, b in zip(losses["fp32"], losses["bf16"]):
        assert abs(a - b) / abs(a) < LOSS_RTOL, (losses["fp32"], losses["bf16"])
    assert losses["bf16"][-1] < losses["bf16"][0]
    # the optimizer state (Adam moments) in the last checkpoint is fp32 too
    ckpt = sorted((tmp_path / "bf16" / "checkpoints").glob("step-*"))[-1]
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    moments = [t for s in opt.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(t.dtype == torch.float32 for t in moments)


@needs_bf16
def test_a_lora_trained_in_bf16_merges_to_an_fp32_model_with_parity(tokenizer, data, tmp_path):
    train_seqs, val = data
    model = lora_model(tokenizer, dropout=0.0)
    train(model, train_seqs, val, SFTObjective(), cfg(precision="bf16", max_steps=8), tmp_path / "run",
          pad_id=tokenizer.pad_token_id)
    model.eval()
    ids = torch.tensor([train_seqs[0].input_ids])
    with torch.inference_mode():
        expected_logits = model(input_ids=ids).logits
    prompts = [[{"role": "user", "content": f"review {i}: the movie was great"}] for i in range(3)]
    expected = generate(model, tokenizer, prompts, 6)
    merged = get("lora").merge(model).eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    with torch.inference_mode():
        assert torch.allclose(merged(input_ids=ids).logits, expected_logits, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    parity = check_parity(tmp_path / "merged", prompts, expected, 6)
    assert parity["identical"] == parity["prompts"] == 3


@needs_bf16
def test_resume_under_bf16_ends_bit_exactly_like_an_uninterrupted_run(tokenizer, data, tmp_path):
    train_seqs, val = data
    c = cfg(precision="bf16")
    full = lora_model(tokenizer)
    r_full = train(full, train_seqs, val, SFTObjective(), c, tmp_path / "full", pad_id=tokenizer.pad_token_id)
    assert r_full.steps == 20
    part = lora_model(tokenizer)
    assert train(part, train_seqs, val, SFTObjective(), c, tmp_path / "part", pad_id=tokenizer.pad_token_id,
                 stop_after=10).steps == 10
    resumed = lora_model(tokenizer)
    r_res = train(resumed, train_seqs, val, SFTObjective(), c, tmp_path / "part", pad_id=tokenizer.pad_token_id,
                  resume=True)
    assert r_res.steps == 20 and r_res.final_train_loss == r_full.final_train_loss
    a, b = trainable_state(full), trainable_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_bf16
def test_holding_the_frozen_base_in_bf16_computes_the_same_and_restores_it_exactly(tokenizer, data, tmp_path):
    """autocast rounds a frozen fp32 weight to the same bf16 values in every forward: holding it in bf16 gives
    the same loss curve, and the fp32 base comes back bit for bit when training ends."""
    train_seqs, val = data
    losses, models = {}, {}
    for mode in ("fp32", "auto"):
        model = lora_model(tokenizer)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        seen = []

        def on_step(record, model=model, seen=seen):
            seen.append({p.dtype for n, p in model.named_parameters()
                         if not p.requires_grad and "base_layer" in n})
        r = train(model, train_seqs, val, SFTObjective(), cfg(precision="bf16", max_steps=6, frozen_precision=mode),
                  tmp_path / mode, pad_id=tokenizer.pad_token_id, on_step=on_step)
        losses[mode] = [x["loss"] for x in read_jsonl(tmp_path / mode / "metrics.jsonl") if x["type"] == "train"]
        after = {n: p for n, p in model.named_parameters() if not p.requires_grad}
        assert after.keys() == before.keys()
        assert all(after[n].dtype == torch.float32 and torch.equal(after[n], before[n]) for n in before)
        models[mode] = (r, seen)
    held, seen = models["auto"]
    assert held.precision["frozen_base"] == "bf16" and held.precision["frozen_tensors"] == 15   # 7 per layer + the untied head
    assert seen and all(s == {torch.bfloat16} for s in seen)       # held in bf16 during every step
    plain, seen_plain = models["fp32"]
    assert plain.precision["frozen_base"] == "fp32" and all(s == {torch.float32} for s in seen_plain)
    for a, b in zip(losses["fp32"], losses["auto"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), (losses["fp32"], losses["auto"])


def test_the_frozen_base_is_restored_when_training_fails(tokenizer):
    from tunesmith.train.frozen import held_in
    model = lora_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    tied = model.get_input_embeddings().weight
    with pytest.raises(RuntimeError, match="boom"):
        with held_in(model, torch.bfloat16) as held:
            assert held.tensors == 15 and tied.dtype == torch.float32   # embeddings stay fp32
            raise RuntimeError("boom")
    after = dict(model.named_parameters())
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], t) for n, t in before.items())


def test_without_temporary_space_the_base_stays_fp32_and_says_why(tokenizer, tmp_path):
    from tunesmith.train.frozen import held_in
    model = lora_model(tokenizer)
    with held_in(model, torch.bfloat16, spill_dir=str(tmp_path / "missing")) as held:
        assert held.tensors == 0 and held.dtype == "fp32" and "temporary file" in held.note
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert "frozen_note" in held.as_dict()
