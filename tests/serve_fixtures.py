"""Helpers for the server tests: tiny fine-tuned runs made by the pipeline, a fake model source, metric parsing."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tiny import sentiment_rows


def tiny_recipe(root: Path, model_dir: Path, data_file: Path, name: str, **sections) -> dict:
    recipe = {
        "name": name, "task": "classification", "objective": {"name": "sft"}, "output_dir": str(root),
        "model": {"name": str(model_dir)},
        "data": {"train": str(data_file), "format": "labelled", "labels": {"0": "negative", "1": "positive"},
                 "instruction": "Is this positive or negative?", "max_length": 64, "clean": {"near_dedup": False}},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "eval_every": 50, "save_every": 50},
        "eval": {"max_new_tokens": 4, "batch_size": 8},
        "export": {"parity_prompts": 2},
    }
    for key, value in sections.items():
        if key == "method" and value.get("name", recipe["method"]["name"]) != recipe["method"]["name"]:
            recipe[key] = dict(value)            # another method: LoRA's keys do not apply
        else:
            recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def build_runs(tmp: Path, model_dir: Path) -> dict[str, Path]:
    """Runs made by tunesmith's own pipeline: ``alpha`` (LoRA, 3 steps), ``beta`` (alpha's adapter with
    strong seeded random LoRA B matrices, so its answers clearly differ), ``cls`` (classification head)
    and ``bitfit`` (trained and exported: served from its merged model)."""
    from tunesmith import pipeline
    data = tmp / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(80)))
    root = tmp / "runs"
    alpha, _ = pipeline.train(tiny_recipe(root, model_dir, data, "alpha"))
    beta_dir = root / "beta-001"
    shutil.copytree(alpha.path, beta_dir)
    weights = beta_dir / "model" / "adapter_model.safetensors"
    state = load_file(str(weights))
    gen = torch.Generator().manual_seed(7)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.5 if "lora_B" in k else v) for k, v in state.items()}
    save_file(state, str(weights))
    cls, _ = pipeline.train(tiny_recipe(root, model_dir, data, "cls", objective={"name": "classification"}))
    bitfit, _ = pipeline.train(tiny_recipe(root, model_dir, data, "bitfit", method={"name": "bitfit"},
                                           train={"lr": 5e-2}))
    pipeline.export(bitfit)
    return {"alpha": alpha.path, "beta": beta_dir, "cls": cls.path, "bitfit": bitfit.path, "root": root}


class FakeSource:
    """A model source like the fine-tuning jobs API's: ids with ':' and '/', mutable at run time."""

    def __init__(self, entries=()):
        self.entries = list(entries)

    def models(self):
        return list(self.entries)


def metric_value(text: str, name: str, labels: dict | None = None) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            return float(m.group(3))
    return 0.0


def reference_generate(run_dir: Path, messages: list[dict], max_new: int) -> str:
    """tunesmith's own greedy generate on the run's model loaded by its method plug-in."""
    from transformers import AutoTokenizer

    from tunesmith import methods, models
    from tunesmith.generation import generate
    from tunesmith.pipeline import Run
    run = Run(run_dir)
    base, _ = models.load(run.recipe.model.name)
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    model = methods.get(run.recipe.method.name).load(base, run_dir / "model", run.recipe.method)
    return generate(model, tok, [messages], max_new)[0]
