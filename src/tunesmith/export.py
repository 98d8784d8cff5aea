"""Export stage: adapter and merged model directories, a model card, and a merged-vs-adapter parity check."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import methods
from .config import Recipe, dump_recipe
from .fsutil import atomic_write_json, atomic_write_text, publish_dir
from .models import CATALOGUE
from .rundir import Layout



def model_card(recipe: Recipe, manifest: dict, summary: dict, kind: str) -> str:
    entry = CATALOGUE.get(recipe.model.name)
    license_ = entry.license if entry else "see the base model's licence"
    tuned = (summary.get("tuned") or {}).get("metrics", {})
    base = (summary.get("base") or {}).get("metrics", {})
    rows = "\n".join(f"| {k} | {base.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in tuned.items())
    files = "\n".join(f"- {k}: `{v['spec']}` sha256 `{v['sha256']}`" for k, v in manifest.get("files", {}).items())
    return f"""---
license: {license_}
base_model: {recipe.model.name}
library_name: {"peft" if kind == "adapter" and methods.get(recipe.method.name).peft_adapter else
                "tunesmith" if kind == "adapter" else "transformers"}
tags: [tunesmith, {recipe.method.name}, {recipe.task}]
---
# {recipe.name} ({kind})

Fine-tuned from `{recipe.model.name}` with tunesmith, method `{recipe.method.name}`, task `{recipe.task}`.
Base model licence: **{license_}** (applies to these weights too).

## Evaluation on the held-out test split
| metric | base | tuned |
|---|---|---|
{rows or "| (none) | | |"}

## Data
{files}

Counts after preprocessing: {json.dumps(manifest.get("counts", {}))}

## Recipe
```yaml
{dump_recipe(recipe)}```
"""


def save_tuned(method, model, tokenizer, out_dir: Path, objective=None) -> Path:
    """Save what the method trained (adapter or weights), the objective's own weights (e.g. a new
    head) and the tokenizer, atomically."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    method.save(model, tmp)
    if objective is not None and callable(getattr(objective, "save_extra", None)):
        objective.save_extra(model, tmp)
    tokenizer.save_pretrained(tmp)
    mergeable = method.mergeable and getattr(objective, "mergeable", True)
    atomic_write_json(tmp / "tunesmith.json", {"method": method.name, "mergeable": mergeable,
                                               "objective": getattr(objective, "name", "sft")})
    publish_dir(tmp, out_dir)
    return out_dir


def export(method, model, tokenizer, recipe: Recipe, run_dir: Path, manifest: dict, summary: dict,
           parity_prompts: list[list[dict]] | None = None, objective=None) -> dict:
    """Write ``export/adapter`` (adapter methods) and ``export/merged`` (plain transformers dir).

    With ``parity_prompts``, greedy outputs of the tuned (adapter-on-base) model are compared with
    those of the merged directory reloaded from disk by plain transformers. Consumes ``model``
    (merging folds the adapter in place).
    """
    from .generation import generate

    out = Layout(run_dir).export_dir
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"adapter": None, "merged": None, "parity": None}
    max_new = recipe.eval.max_new_tokens
    mergeable = method.mergeable and getattr(objective, "mergeable", True)
    before = generate(model, tokenizer, parity_prompts, max_new) if parity_prompts and mergeable else None
    if recipe.export.adapter and (method.has_adapter or not mergeable):
        path = save_tuned(method, model, tokenizer, out / "adapter", objective)
        atomic_write_text(path / "README.md", model_card(recipe, manifest, summary, "adapter"))
        result["adapter"] = str(path)
    if recipe.export.merged and mergeable:
        merged = method.merge(model)
        tmp = out / ".merged.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", model_card(recipe, manifest, summary, "merged"))
        publish_dir(tmp, out / "merged")
        result["merged"] = str(out / "merged")
        if before is not None:
            result["parity"] = check_parity(out / "merged", parity_prompts, before, max_new)
    return result


def check_parity(merged_dir: Path, prompts: list[list[dict]], expected: list[str], max_new: int) -> dict:
    """Reload ``merged_dir`` with plain transformers and compare greedy outputs with ``expected``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .generation import generate

    tok = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    got = generate(model, tok, prompts, max_new)
    mismatches = [{"prompt": p[-1]["content"], "adapter": e, "merged": g}
                  for p, e, g in zip(prompts, expected, got) if e != g]
    return {"prompts": len(prompts), "identical": len(prompts) - len(mismatches), "mismatches": mismatches}
