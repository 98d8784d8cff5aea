#!/usr/bin/env python
"""Data-parallel training, 1 process against N: wall time, tokens/s and whether the weights agree.

Trains the sentiment example's LoRA job (``examples/sentiment/recipe.yaml``: SmolLM2-135M-Instruct, r16, batch 8,
max_length 256) for ``--steps`` optimizer steps on a seeded sample of Rotten Tomatoes snippets, once with
``train.nproc: 1`` and once with ``train.nproc: N`` (torchrun, gloo on CPU; each process gets the cores divided
among them), on the same prepared data, and prints one JSON object: per run the training wall time (model
loading and, for N, process start-up included: what a user waits for), tokens/s as the loop measured it, the
steps, the final loss; and the largest difference between the two runs' adapter weights (the same global batch:
they should agree to float rounding). The N-process runs record the largest rank's peak memory
(``distributed.rank_peak_rss_mb``): with ``fsdp`` each rank holds half of every weight.

    .venv/bin/python bench/nproc.py [--nproc 2] [--steps 8] [--strategy ddp|fsdp|both] [--out nproc.json]

On a 2-core CPU expect little or no gain (two processes share two cores; each holds its own copy of the model):
the point is that the path is correct; it pays with more cores or GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def train_once(nproc: int, steps: int, root: Path, strategy: str = "ddp") -> tuple[dict, Path]:
    from tunesmith import pipeline
    overrides = [f"output_dir={root}", f"name=nproc{nproc}-{strategy}", "data.max_examples=400",
                 f"train.max_steps={steps}", f"train.nproc={nproc}", f"train.strategy={strategy}", f"train.eval_every={steps}", f"train.save_every={steps}",
                 "method.dropout=0.0", "train.precision=fp32", "tracking.mlflow=false"]
    run = pipeline.prepare(HERE / "examples" / "sentiment" / "recipe.yaml", overrides)
    t0 = time.perf_counter()
    _run, result = pipeline.train(run)
    wall = time.perf_counter() - t0
    return {"nproc": nproc, "strategy": strategy if nproc > 1 else None, "wall_s": round(wall, 2), "loop_s": round(result.wall_s, 2),
            "tokens_per_s": round(result.tokens_per_s, 1), "steps": result.steps, "tokens": result.tokens,
            "final_loss": result.final_train_loss, "distributed": result.distributed}, run.model_dir


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file
    [fa], [fb] = list(a.glob("*.safetensors")), list(b.glob("*.safetensors"))
    wa, wb = load_file(fa), load_file(fb)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--strategy", choices=["ddp", "fsdp", "both"], default="ddp",
                    help="how the N processes share the model (both: one N-process run of each)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    strategies = ["ddp", "fsdp"] if args.strategy == "both" else [args.strategy]
    with tempfile.TemporaryDirectory(prefix="tunesmith-nproc-") as tmp:
        one, one_dir = train_once(1, args.steps, Path(tmp))
        runs, differences = [one], {}
        for strategy in strategies:
            many, many_dir = train_once(args.nproc, args.steps, Path(tmp), strategy)
            many["speedup"] = round(one["wall_s"] / many["wall_s"], 3)
            runs.append(many)
            differences[strategy] = max_difference(one_dir, many_dir)
        out = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}, "runs": runs,
               "max_adapter_difference": differences}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
