"""Faults survivable: damaged checkpoints fall back to an intact one, torn metrics lines, partial checkpoint
writes; every resume ends bit-exactly where an uninterrupted run ends, with each metric row logged once."""
import json
import random
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch

from tiny import review_sequences, make_model
from tunesmith.config import MethodConfig, TrainConfig
from tunesmith.data.example import Example
from tunesmith.data.tokenize import tokenize_all
from tunesmith.methods import get
from tunesmith.methods.base import trainable_state
from tunesmith.objectives.sft import SFTObjective
from tunesmith.rundir import read_jsonl
from tunesmith.train import checkpoint
from tunesmith.train.loop import train

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def data(tokenizer):
    return review_sequences(tokenizer)


def lora_model(tokenizer):
    # dropout on: resume must restore the RNG too for the runs to match bit-exactly
    return get("lora").apply(make_model(tokenizer, 0), MethodConfig(r=4, alpha=8, dropout=0.1))


# 20 optimizer steps; checkpoints every 3 (keep=2); validation every 4
CFG = TrainConfig(epochs=2, batch_size=4, lr=5e-3, eval_every=4, save_every=3, early_stopping_patience=None,
                  seed=0, threads=1)


def run(tokenizer, data, run_dir, **kw):
    train_seqs, val = data
    model = lora_model(tokenizer)
    seen = []
    res = train(model, train_seqs, val, SFTObjective(), CFG, run_dir, pad_id=tokenizer.pad_token_id,
                on_step=lambda r: seen.append(r["step"]), **kw)
    return model, res, seen


@pytest.fixture(scope="module")
def reference(tokenizer, data, tmp_path_factory):
    model, res, _ = run(tokenizer, data, tmp_path_factory.mktemp("reference"))
    assert res.steps == 20
    return trainable_state(model)


@pytest.fixture(scope="module")
def interrupted(tokenizer, data, tmp_path_factory):
    """A run stopped after step 10: checkpoints at steps 6 and 9, metrics up to step 10 (+ one eval at 8)."""
    path = tmp_path_factory.mktemp("interrupted")
    _, res, _ = run(tokenizer, data, path, stop_after=10)
    assert res.steps == 10
    assert sorted(p.name for p in (path / "checkpoints").glob("step-*")) == ["step-000006", "step-000009"]
    return path


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def assert_rows_once(run_dir: Path, last_step: int = 20):
    recs = read_jsonl(run_dir / "metrics.jsonl")
    assert recs.skipped == 0
    counts = Counter((r["type"], r["step"]) for r in recs)
    assert [k for k, n in counts.items() if n > 1] == []
    assert sorted(s for t, s in counts if t == "train") == list(range(1, last_step + 1))
    assert sorted(s for t, s in counts if t == "eval") == [4, 8, 12, 16, 20]


def assert_equal_weights(model, reference):
    got = trainable_state(model)
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in reference)


def test_a_torn_last_metrics_line_does_not_stop_resume(tokenizer, data, interrupted, reference, tmp_path):
    """issue 9: one good line plus ``{"type": "train", "st`` made --resume raise JSONDecodeError."""
    path = copy_of(interrupted, tmp_path)
    with open(path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"type": "train", "st')
    model, res, seen = run(tokenizer, data, path, resume=True)
    assert res.steps == 20 and seen[0] == 10          # the intact newest checkpoint (step 9) is used
    assert_rows_once(path)
    assert_equal_weights(model, reference)


def _truncate_half(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


DAMAGE = {
    "truncated trainable.safetensors": lambda c: _truncate_half(c / "trainable.safetensors"),
    "empty optimizer file": lambda c: (c / checkpoint.OPTIMIZER).write_bytes(b""),
    "torn state.json": lambda c: _truncate_half(c / "state.json"),
    "torn manifest.json": lambda c: _truncate_half(c / checkpoint.MANIFEST),
    "one flipped byte in trainable.safetensors": lambda c: _flip_last_byte(c / "trainable.safetensors"),
}


def _flip_last_byte(p: Path):
    b = bytearray(p.read_bytes())
    b[-1] ^= 0xFF
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(damage, tokenizer, data, interrupted, reference,
                                                                 tmp_path, capsys):
    path = copy_of(interrupted, tmp_path)
    DAMAGE[damage](path / "checkpoints" / "step-000009")
    with open(path / "metrics.jsonl", "a", encoding="utf-8") as f:     # and the interruption tore a line
        f.write('{"type": "train", "st')
    assert checkpoint.latest_step(path / "checkpoints") == 6
    model, res, seen = run(tokenizer, data, path, resume=True)
    assert res.steps == 20 and seen[0] == 7            # replayed from step 6
    err = capsys.readouterr().err
    assert "step-000009" in err and "step-000006" in err
    assert_rows_once(path)
    assert_equal_weights(model, reference)
    # the damaged checkpoint was replaced by the replayed run's own, and nothing partial is left
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["best.safetensors", "step-000018",
                                                                       "step-000020"]


def test_interrupted_during_the_first_checkpoint_write_resumes_from_scratch(tokenizer, data, reference, tmp_path,
                                                                           monkeypatch):
    path = tmp_path / "run"

    def killed(*a, **k):    # the process dies after the weights, before the optimizer state is written
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tokenizer, data, path)
    monkeypatch.undo()
    assert [p.name for p in (path / "checkpoints").iterdir() if p.name.startswith(".tmp-step-")]
    assert checkpoint.latest_intact(path / "checkpoints") is None
    assert checkpoint.latest_step(path / "checkpoints") is None
    model, res, seen = run(tokenizer, data, path, resume=True)
    assert seen[0] == 1 and res.steps == 20
    assert not list((path / "checkpoints").glob(".tmp-*"))
    assert_rows_once(path)
    assert_equal_weights(model, reference)


def test_the_manifest_lists_every_file_with_size_and_hash(interrupted):
    ckpt = interrupted / "checkpoints" / "step-000009"
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())
    files = {p.name for p in ckpt.iterdir()} - {checkpoint.MANIFEST}
    assert set(manifest["files"]) == files and {"trainable.safetensors", "state.json"} <= files
    for name, entry in manifest["files"].items():
        assert entry["size"] == (ckpt / name).stat().st_size
        assert len(entry["sha256"]) == 64
    assert checkpoint.verify(ckpt) == []


def test_a_checkpoint_without_manifest_still_loads_and_damage_is_still_found(tokenizer, data, interrupted,
                                                                             reference, tmp_path):
    """Checkpoints written before manifests: what can be checked is (state.json parses, files load)."""
    path = copy_of(interrupted, tmp_path)
    for c in (path / "checkpoints").glob("step-*"):
        (c / checkpoint.MANIFEST).unlink()
        # the old single-file format: python RNG state as a tuple, pickled with torch.save
        extra = torch.load(c / checkpoint.OPTIMIZER, weights_only=True)
        version, internal, gauss = extra["python_rng"]
        extra["python_rng"] = (version, tuple(internal), gauss)
        torch.save(extra, c / checkpoint.OPTIMIZER)
    assert checkpoint.verify(path / "checkpoints" / "step-000009") == []
    _truncate_half(path / "checkpoints" / "step-000009" / "trainable.safetensors")
    problems = checkpoint.verify(path / "checkpoints" / "step-000009")
    assert problems and "trainable.safetensors" in problems[0]
    model, res, seen = run(tokenizer, data, path, resume=True)
    assert seen[0] == 7
    assert_rows_once(path)
    assert_equal_weights(model, reference)


def test_stray_partial_checkpoints_are_cleaned_at_save(tokenizer, tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000003-12345").mkdir(parents=True)
    (root / ".tmp-step-000003-12345" / "trainable.safetensors").write_bytes(b"x")
    model = lora_model(tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    random.seed(1)
    saved = checkpoint.save(root, trainable_state(model), opt.state_dict(), sched, checkpoint.LoopState(step=4))
    assert sorted(p.name for p in root.iterdir()) == ["step-000004"]
    assert checkpoint.latest_intact(root) == saved and checkpoint.latest_step(root) == 4
    assert checkpoint.latest(root) == saved


def test_checkpoints_load_with_weights_only():
    hits = subprocess.run(["grep", "-rn", "weights_only=False", str(SRC)], capture_output=True, text=True).stdout
    assert hits == ""
