"""Shared fixtures: an isolated TUNESMITH_HOME, a tiny local model folder, small datasets, recipes."""
from __future__ import annotations

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")    # before transformers is imported: never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import yaml

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
        recipe = {
            "name": "tiny", "task": "classification", "output_dir": str(tmp_path / "runs"),
            "model": {"name": str(tiny_model_dir)},
            "data": {"train": str(sentiment_file), "format": "labelled",
                     "labels": {"0": "negative", "1": "positive"},
                     "instruction": "Is this positive or negative?", "max_length": 64,
                     "clean": {"near_dedup": False}},
            "method": {"name": "lora", "r": 4, "alpha": 8},
            "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "eval_every": 5, "save_every": 5},
            "eval": {"max_new_tokens": 4, "batch_size": 8, "embedding_model": "tfidf"},
            "forgetting": {"max_documents": 8, "max_prompts": 4},
            "tracking": {"mlflow": False},
        }
        for key, value in sections.items():
            recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path
    return make
