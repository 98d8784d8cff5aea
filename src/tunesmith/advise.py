"""`tunesmith advise`: measure the cheap baselines on a sample, time a training step, recommend a path."""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from .config import Recipe, load_recipe
from .errors import TunesmithError
from .fsutil import atomic_write_json, new_run_dir

# bytes per parameter while training in fp32 with AdamW: weights + grads + two moments
FULL_BYTES_PER_PARAM = 16
WEIGHT_BYTES_PER_PARAM = 4


def machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time_training(recipe: Recipe, model, tokenizer, seqs: list, steps: int = 2) -> dict:
    """Forward+backward of the recipe's method on real training batches: tokens/s and peak memory."""
    import torch

    from . import methods, objectives
    from .objectives.base import hook
    objective = objectives.from_recipe(recipe)
    if hook(objective, "attach"):
        model = objective.attach(model, tokenizer, recipe)
    model = methods.get(recipe.method.name).apply(model, recipe.method)
    model.train()
    batch_size = recipe.train.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-9)
    tokens, t0 = 0, None
    for i in range(steps + 1):             # the first step warms up and is not timed
        items = seqs[(i * batch_size) % max(len(seqs), 1):][:batch_size] or seqs[:batch_size]
        batch = objective.collate(items, tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                  else tokenizer.eos_token_id)
        batch = {k: v.to(next(model.parameters()).device) if hasattr(v, "to") else v for k, v in batch.items()}
        if i == 1:
            t0 = time.perf_counter()
        out = objective(model, batch)
        (out.loss_sum / max(out.count, 1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 1:
            tokens += sum(len(s.input_ids) for s in items)
    wall = time.perf_counter() - (t0 or time.perf_counter())
    trainable = sum(p.numel() for p in params)
    return {"tokens_per_s": tokens / wall if wall > 0 else None, "trainable_parameters": trainable,
            "peak_rss_bytes": _rss_bytes()}


def choose_method(n_train: int, params: int, memory: int, probe: dict | None) -> dict:
    """Method family from data size and memory, with the arithmetic shown."""
    full_need = params * FULL_BYTES_PER_PARAM
    peak = (probe or {}).get("peak_rss_bytes") or params * WEIGHT_BYTES_PER_PARAM * 3
    why = [f"{n_train:,} training examples",
           f"full fine-tuning needs about {full_need / 2**30:.1f} GiB for weights, gradients and AdamW "
           f"state; this machine has {memory / 2**30:.1f} GiB"]
    if n_train < 50:
        return {"family": "none (prompting)", "method": None, "why": why + [
            "under 50 examples: fine-tuning would overfit; use few-shot or RAG and collect at least 200 examples"]}
    if memory and peak > 0.7 * memory:
        return {"family": "light adapters", "method": "ia3", "why": why + [
            f"a LoRA step peaked at {peak / 2**30:.1f} GiB, over 70% of memory: use ia3 or freeze with "
            "train.gradient_checkpointing: true"]}
    if n_train >= 5000 and memory and full_need < 0.4 * memory:
        return {"family": "full fine-tuning", "method": "full", "why": why + [
            "5,000+ examples and the full optimizer state fits in 40% of memory: full fine-tuning (or LoRA "
            "with a high rank) can use the data"]}
    if n_train < 200:
        return {"family": "small LoRA", "method": "lora", "r": 8, "why": why + [
            "50-200 examples: a low-rank LoRA (r=8) with early stopping; ia3 is a lighter alternative"]}
    return {"family": "LoRA", "method": "lora", "r": 16, "why": why + [
        "200-5,000 examples: LoRA r=16 on all projections is the best trade of quality, speed and size here"]}


def verdict(scores: dict[str, float], key: str) -> dict:
    """Whether fine-tuning is worth trying, from the baseline scores on the sample."""
    fraction = key in ("accuracy", "exact_match") or key.startswith("macro_")
    top = 1.0 if fraction else 100.0
    best = max(scores, key=scores.get)
    b = scores[best]
    base = scores.get("base", b)
    if b >= 0.95 * top:
        return {"fine_tune": False, "best_baseline": best,
                "text": f"{best} already scores {b:.3g}: fine-tuning has little room to help; deploy {best}."}
    if best == "rag" and b - max(base, scores.get("few_shot", base)) > 0.15 * top:
        return {"fine_tune": True, "best_baseline": best,
                "text": "retrieval helps a lot (the task needs knowledge from your data): start with RAG, and "
                        "fine-tune for format/behaviour (optionally serve fine-tuned + RAG)."}
    return {"fine_tune": True, "best_baseline": best,
            "text": f"the best cheap alternative ({best}) reaches {b:.3g} of {top:g}: fine-tuning is worth "
                    "trying; the run's report will compare it against these baselines."}


def advise(recipe: str | Path | dict | Recipe, overrides: list[str] | None = None, *, sample: int = 64) -> dict:
    from . import models
    from .data.prepare import build_splits
    from .eval.baselines import PromptBuilder, context_limit
    from .eval.decide import headline
    from .eval.evaluate import score_prompts
    from .train.progress import console
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    if not recipe.metrics():
        raise TunesmithError(f"advise compares systems on a generation metric; task {recipe.task} has none",
                             field="task")
    splits, manifest = build_splits(recipe)
    labels = manifest.get("labels")
    tests = [ex for ex in splits["test"] if ex.messages and ex.reference is not None][:sample]
    if not tests:
        raise TunesmithError("no held-out examples with answers to measure baselines on", field="data.split.test")
    model, tokenizer = models.load(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    params = sum(p.numel() for p in model.parameters())
    builder = PromptBuilder(recipe, tokenizer, splits["train"], context_limit(model, tokenizer,
                                                                              recipe.eval.max_new_tokens))
    systems = {"base": [ex.prompt_messages for ex in tests], "few_shot": builder.few_shot(tests),
               "rag": builder.rag(tests)}
    results = {k: score_prompts(model, tokenizer, tests, p, recipe, labels, title=f"advise {k}")
               for k, p in systems.items()}
    key = headline(recipe, results["base"])
    scores = {k: float(v["metrics"].get(key, 0.0)) for k, v in results.items()}
    seqs = objective_seqs(recipe, splits, tokenizer)
    # preference and distillation objectives need a reference/teacher pass first: no quick probe
    probe = _time_training(recipe, model, tokenizer, seqs) if seqs and recipe.objective.name in (
        "sft", "classification") else None
    memory = machine_memory_bytes()
    n_train = len(splits["train"])
    train_tokens = sum(len(s.input_ids) for s in seqs) * recipe.train.epochs
    estimate = train_tokens / probe["tokens_per_s"] if probe and probe["tokens_per_s"] else None
    out = {
        "recipe": recipe.name, "model": recipe.model.name, "parameters": params, "metric": key,
        "sample": len(tests), "counts": manifest["counts"],
        "baselines": {k: {"score": scores[k], "metrics": v["metrics"],
                          "prompt_tokens": v["generation"]["prompt_tokens"],
                          "latency_s": v["generation"]["per_example_s"]} for k, v in results.items()},
        "machine": {"memory_bytes": memory, "cpus": os.cpu_count()},
        "training_probe": probe, "estimated_training_s": estimate,
        "verdict": verdict(scores, key), "method": choose_method(n_train, params, memory, probe),
    }
    folder = new_run_dir(recipe.output_dir, f"{recipe.name}-advise")
    atomic_write_json(folder / "advise.json", out)
    out["path"] = str(folder / "advise.json")
    console.print(f"advice saved to {out['path']}")
    return out


def objective_seqs(recipe: Recipe, splits: dict, tokenizer) -> list:
    from . import objectives
    seqs, _ = objectives.from_recipe(recipe).build({"train": splits["train"]}, tokenizer, recipe)
    return seqs["train"]


def print_advice(out: dict, console) -> None:
    from rich.table import Table
    key = out["metric"]
    t = Table(title=f"Cheap baselines on {out['sample']} held-out examples ({out['model']})")
    for col in ("system", key, "prompt tokens / request", "latency / request"):
        t.add_column(col, justify="right" if col != "system" else "left")
    names = {"base": "base zero-shot", "few_shot": "base few-shot", "rag": "base + RAG"}
    for k, b in out["baselines"].items():
        t.add_row(names[k], f"{b['score']:.3f}", f"{b['prompt_tokens']:.0f}", f"{1000 * b['latency_s']:.0f} ms")
    console.print(t)
    probe, m = out.get("training_probe") or {}, out["method"]
    if out.get("estimated_training_s"):
        console.print(f"training: {probe['tokens_per_s']:.0f} tokens/s measured with {out['counts']['train']:,} "
                      f"examples -> about {out['estimated_training_s'] / 60:.1f} min for the recipe's epochs; "
                      f"peak memory {probe['peak_rss_bytes'] / 2**30:.1f} GiB")
    console.print(f"[bold]fine-tune?[/bold] {'yes' if out['verdict']['fine_tune'] else 'no'}: {out['verdict']['text']}")
    console.print(f"[bold]method:[/bold] {m['family']}" + (f" (method.name: {m['method']})" if m.get("method") else ""))
    for line in m["why"]:
        console.print(f"  - {line}")
