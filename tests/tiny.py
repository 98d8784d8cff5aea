"""Tiny local ChatML tokenizer and random Llama model for tests (no network access needed)."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import yaml

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunesmith.config import merge_settings

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The movie was wonderful and the actors were great.",
    "I did not enjoy the food; it was cold and bland.",
    "What is the capital of France? The capital of France is Paris.",
    "Summarise the following text in one sentence.",
    "positive negative neutral sentiment review answer question",
    "system user assistant You are a helpful assistant.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (lossless round trip) with ChatML special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE)


def make_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama sized to ``tokenizer``'s vocabulary, float32, in eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         initializer_range=0.1)  # wide enough that a frozen head can express confident answers
    return LlamaForCausalLM(config).eval()


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


def write_sentiment(path: Path, n: int = 80) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(n)))
    return path


def tiny_recipe(root: Path, model_dir: Path, data_file: Path, **sections) -> Path:
    """Write ``root/recipe.yaml``: the same recipe as the ``recipe_file`` fixture, for wider-scoped fixtures."""
    recipe = {
        "name": "tiny", "task": "classification", "objective": {"name": "sft"}, "output_dir": str(root / "runs"),
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


def review_sequences(tokenizer):
    """44 short tokenised reviews with one-word answers: 40 to train on, 4 to validate (loop-level tests)."""
    from tunesmith.data.example import Example
    from tunesmith.data.tokenize import tokenize_all
    words = ["great", "bland", "wonderful", "cold"]
    exs = [Example(messages=[{"role": "user", "content": f"review {i}: the movie was {words[i % 4]}"},
                             {"role": "assistant", "content": "positive" if i % 2 == 0 else "negative"}])
           for i in range(44)]
    seqs, _ = tokenize_all(exs, tokenizer, 64)
    return seqs[:40], seqs[40:]
