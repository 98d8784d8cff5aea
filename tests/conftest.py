"""Shared fixtures: an isolated TUNESMITH_HOME, a tiny local model folder, small datasets, recipes."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")    # before transformers is imported: never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TUNESMITH_PRECISION", "fp32")   # the suite computes alike on every machine;
# tests/test_precision.py covers `auto` and bf16

import pytest
import yaml

from tunesmith.config import merge_settings

from tiny import make_model, make_tokenizer


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


POSITIVE = ["wonderful", "great", "enjoy", "quick"]
NEGATIVE = ["cold", "bland", "lazy", "not"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Labelled rows whose label is decided by which word family appears: learnable quickly."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = POSITIVE if label else NEGATIVE
        filler = rng.sample(["the", "movie", "was", "food", "actors", "review", "dog", "fox"], 3)
        rows.append({"text": f"{' '.join(filler)} {rng.choice(words)} {rng.choice(words)} {i}",
                     "label": label})
    return rows


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


def write_sentiment(path: Path, n: int = 80) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(n)))
    return path


def tiny_recipe(root: Path, model_dir: Path, data_file: Path, **sections) -> Path:
    """Write ``root/recipe.yaml``: the same recipe as the ``recipe_file`` fixture, for wider-scoped fixtures."""
    recipe = {
        "name": "tiny", "task": "classification", "output_dir": str(root / "runs"),
        "model": {"name": str(model_dir)},
        "data": {"train": str(data_file), "format": "labelled",
                 "labels": {"0": "negative", "1": "positive"},
                 "instruction": "Is this positive or negative?", "max_length": 64,
                 "clean": {"near_dedup": False}},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "eval_every": 5, "save_every": 5},
        "eval": {"max_new_tokens": 4, "batch_size": 8, "embedding_model": "tfidf"},
        "forgetting": {"max_documents": 8, "max_prompts": 4},
        "tracking": {"mlflow": False},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(merge_settings(recipe, sections)))
    return path


def tree_digest(path: Path) -> str:
    """One hash over every file's relative path and bytes below ``path``."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


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
