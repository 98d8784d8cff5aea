"""Shared fixtures: an isolated TUNESMITH_HOME, a tiny local model folder, small datasets, recipes."""
from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")    # before transformers is imported: never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TUNESMITH_PRECISION", "fp32")   # the suite computes alike on every machine;
# tests/test_precision.py covers `auto` and bf16

import pytest

from tiny import make_model, make_tokenizer, sentiment_rows, tiny_recipe, tree_digest, write_sentiment  # noqa: F401


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "tunesmith-home"))


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved random 2-layer Llama + ChatML tokenizer that `from_pretrained` loads offline."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def sentiment_file(tmp_path):
    path = tmp_path / "sentiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(80)))
    return path


@pytest.fixture
def recipe_file(tmp_path, tiny_model_dir, sentiment_file):
    """A complete, fast recipe on the tiny model; tests override keys as needed."""
    def make(**sections):
        return tiny_recipe(tmp_path, tiny_model_dir, sentiment_file, **sections)
    return make


@dataclass(frozen=True)
class FinishedRun:
    path: Path          # the run directory (tiny-001)
    stdout: str         # what `tunesmith run` printed


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model_dir):
    """One complete `tunesmith run` of the default ``recipe_file`` recipe (3 epochs, base vs tuned,
    adapter + merged export with parity), built once per session. READ ONLY: tests that change a
    run copy it first (``shutil.copytree``); teardown fails the session if anything changed it."""
    root = tmp_path_factory.mktemp("finished-run")
    recipe = tiny_recipe(root, tiny_model_dir, write_sentiment(root / "sentiment.jsonl"))
    from tunesmith.cli import main
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out):
        mp.setenv("TUNESMITH_HOME", str(root / "tunesmith-home"))   # the per-test isolation is not up yet
        code = main(["run", str(recipe)])
    assert code == 0, out.getvalue()
    run = FinishedRun(root / "runs" / "tiny-001", out.getvalue())
    before = tree_digest(run.path)
    yield run
    assert tree_digest(run.path) == before, f"a test changed the shared run {run.path}"
