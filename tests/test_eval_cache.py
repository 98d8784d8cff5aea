"""The eval cache: base-model results (zero-shot, few-shot, RAG, forgetting baseline) are measured once
per weights + prompts + settings and reused by later runs, which say so."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tunesmith import pipeline
from tunesmith.eval import cache, stage
from tunesmith.fsutil import atomic_write_json

from tiny import make_model

FILES = ("base.json", "baselines.json", "forgetting_base.json")


@pytest.fixture
def small(recipe_file):
    """A recipe whose base measurements are all on and small: 8 test items, 2 shots, 2 passages."""
    return recipe_file(eval={"baselines": ["few_shot", "rag"], "few_shot_k": 2, "rag_k": 2, "max_examples": 8},
                       forgetting={"max_documents": 4, "max_prompts": 2})


def _measure(path, overrides=None):
    """Prepare a new run and measure its base model; returns (run, {file: content})."""
    run = pipeline.prepare(path, overrides)
    session = pipeline.Session(run)
    stage.measure_base(session)
    return run, {f: json.loads((run.eval_dir / f).read_text()) for f in FILES if (run.eval_dir / f).is_file()}


def _strip(files: dict) -> dict:
    """The results without the cache provenance."""
    out = {}
    for name, data in files.items():
        data = {k: v for k, v in data.items() if k != "cached"}
        if name == "baselines.json":
            data = {k: {kk: vv for kk, vv in v.items() if kk != "cached"} for k, v in data.items()}
        out[name] = data
    return out


def _answers(files: dict) -> dict:
    """What was measured, without timings: metrics, losses and every prediction."""
    def keep(d):
        return {k: d.get(k) for k in ("metrics", "loss", "predictions", "perplexity", "answers")}
    return {"zero-shot": keep(files["base.json"]), "forgetting": keep(files["forgetting_base.json"]),
            **{k: keep(v) for k, v in files["baselines.json"].items()}}


def _cached(files: dict) -> dict:
    """Part -> its ``cached`` record (None when measured in this run)."""
    return {"zero-shot": files["base.json"].get("cached"),
            **{k: v.get("cached") for k, v in files["baselines.json"].items()},
            "forgetting": files["forgetting_base.json"].get("cached")}


def _forbid_measuring(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the base model was evaluated again")
    for name in ("evaluate_split", "score_baseline", "measure_general"):
        monkeypatch.setattr(stage, name, boom)


def test_second_run_reuses_every_base_measurement_and_says_so(small, monkeypatch, capsys):
    run1, first = _measure(small)
    assert set(first) == set(FILES) and {"few_shot", "rag"} <= set(first["baselines.json"])
    assert all(v is None for v in _cached(first).values())
    assert len(cache.entries()) == 4                           # zero-shot, few-shot, RAG, forgetting
    capsys.readouterr()

    _forbid_measuring(monkeypatch)
    run2, second = _measure(small)
    assert run2.path != run1.path
    assert _strip(second) == _strip(first)                      # the same numbers and predictions
    records = _cached(second)
    assert all(r and len(r["key"]) == 64 and r["measured"][:4].isdigit() for r in records.values())
    assert len({r["key"] for r in records.values()}) == 4      # one entry per part
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "reused" in ln)
    assert records["zero-shot"]["key"][:12] in line and "few-shot" in line and "forgetting" in line


def test_a_full_run_uses_the_cached_base_and_reports_it(small, monkeypatch):
    _, first = _measure(small)
    real_split, real_general = stage.evaluate_split, stage.measure_general

    def split(session, model, title, which):
        assert which != "base", "the base model was evaluated again"
        return real_split(session, model, title, which)

    def general(session, model, title):
        assert "base" not in title, "the forgetting baseline was measured again"
        return real_general(session, model, title)
    monkeypatch.setattr(stage, "evaluate_split", split)
    monkeypatch.setattr(stage, "measure_general", general)
    monkeypatch.setattr(stage, "score_baseline", lambda *a, **k: pytest.fail("a baseline was measured again"))
    run_dir = pipeline.run(small, ["train.max_steps=2", "export.check_parity=false", "export.merged=false"])
    report = json.loads((run_dir / "eval" / "report_data.json").read_text())
    rows = {r["system"]: r for r in report["systems"]["rows"]}
    assert {"base", "few_shot", "rag", "tuned"} <= set(rows)
    assert rows["base"]["metrics"] == first["base.json"]["metrics"]
    assert report["forgetting"]["perplexity_before"] == first["forgetting_base.json"]["perplexity"]
    assert json.loads((run_dir / "eval" / "base.json").read_text())["cached"]["key"]


@pytest.mark.parametrize("override", ["eval.max_new_tokens=6", "eval.batch_size=3", "data.split.seed=7",
                                      "eval.precision=bf16"])
def test_other_settings_or_data_measure_again(recipe_file, override):
    path = recipe_file(eval={"baselines": [], "max_examples": 6}, forgetting={"general_text": None,
                                                                              "general_prompts": None})
    _measure(path)
    _, same = _measure(path)
    assert same["base.json"]["cached"]
    _, other = _measure(path, [override])
    assert "cached" not in other["base.json"]
    assert len(cache.entries()) == 2


def test_the_key_follows_the_weights_not_the_folder(recipe_file, tmp_path, tiny_model_dir, tokenizer):
    path = recipe_file(eval={"baselines": [], "max_examples": 6}, forgetting={"general_text": None,
                                                                              "general_prompts": None})
    _measure(path)
    copy = tmp_path / "copied-model"
    shutil.copytree(tiny_model_dir, copy)
    _, moved = _measure(path, [f"model.name={copy}"])
    assert moved["base.json"]["cached"]                        # same bytes elsewhere: same key
    other = tmp_path / "other-model"
    make_model(tokenizer, seed=1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    _, changed = _measure(path, [f"model.name={other}"])
    assert "cached" not in changed["base.json"]


def test_a_corrupt_entry_is_ignored_and_replaced(small, monkeypatch, capsys):
    _, first = _measure(small)
    files = cache.entries()
    files[0].write_text(files[0].read_text()[:40])            # torn
    entry = json.loads(files[1].read_text())
    entry["result"]["tampered"] = True                          # edited: no longer matches its checksum
    atomic_write_json(files[1], entry)
    files[2].write_text("[1, 2]")                               # not an entry
    capsys.readouterr()
    _, second = _measure(small)
    assert sum(r is None for r in _cached(second).values()) == 3
    assert _answers(second) == _answers(first)
    assert "ignored 3 unreadable entries" in capsys.readouterr().err
    _forbid_measuring(monkeypatch)
    _, third = _measure(small)                                   # replaced: reused again
    assert all(_cached(third).values())


def test_cache_off_measures_again(recipe_file, monkeypatch):
    path = recipe_file(eval={"baselines": [], "max_examples": 6}, forgetting={"general_text": None,
                                                                              "general_prompts": None})
    _measure(path)
    calls = []
    real = stage.evaluate_split
    monkeypatch.setattr(stage, "evaluate_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, again = _measure(path, ["eval.cache=false"])
    assert calls == [1] and "cached" not in again["base.json"]
    assert len(cache.entries()) == 1                            # nothing stored either


def test_weights_are_hashed_once_per_file_version(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"weights-1")
    (folder / "config.json").write_text("{}")
    os.utime(weights, ns=(10**18, 10**18))
    os.utime(folder / "config.json", ns=(10**18, 10**18))
    first = cache.folder_fingerprint(folder)
    memo = json.loads((cache.cache_dir() / cache.WEIGHTS_FILE).read_text())
    assert {v["sha256"] for v in memo.values()} >= {cache.hashlib.sha256(b"weights-1").hexdigest()}
    assert cache.folder_fingerprint(folder) == first
    weights.write_bytes(b"weights-2")                           # same size, new mtime
    stamp = weights.stat().st_mtime_ns
    second = cache.folder_fingerprint(folder)
    assert second != first
    weights.write_bytes(b"weights-3")          # same size and mtime (coarse clock), other bytes: still seen
    os.utime(weights, ns=(stamp, stamp))
    assert cache.folder_fingerprint(folder) != second


def test_evaluation_runs_and_is_recorded_in_the_precision_asked_for(recipe_file):
    """eval.precision: bf16 evaluates base, baselines and the tuned model under bf16 autocast and says so."""
    path = recipe_file(eval={"precision": "bf16", "baselines": ["few_shot"], "few_shot_k": 2, "max_examples": 6},
                       forgetting={"max_documents": 2, "max_prompts": 2})
    run_dir = pipeline.run(path, ["train.max_steps=2", "export.check_parity=false", "export.merged=false"])
    report = json.loads((run_dir / "eval" / "report_data.json").read_text())
    assert report["eval_precision"] == {"used": "bf16", "requested": "bf16", "reason": "requested"}
    rows = {r["system"]: r for r in report["systems"]["rows"]}
    assert {"base", "few_shot", "tuned"} <= set(rows)
    assert len(json.loads((run_dir / "eval" / "tuned.json").read_text())["predictions"]) == 6


@pytest.mark.parametrize("override,reused", [("objective.neftune_alpha=5", True),
                                             ("objective.label_smoothing=0.1", False)])
def test_training_only_objective_settings_keep_the_cached_base(recipe_file, override, reused):
    """An objective setting marked train-only (NEFTune noise, a head's probe size) cannot change the base
    model's evaluation and keeps its cache entry; one that changes the measured loss does not."""
    path = recipe_file(eval={"baselines": [], "max_examples": 6}, forgetting={"general_text": None,
                                                                              "general_prompts": None})
    _measure(path)
    _, other = _measure(path, [override])
    assert bool(other["base.json"].get("cached")) is reused
