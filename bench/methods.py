#!/usr/bin/env python
"""Every fine-tuning method on the real model with the same data and budget -> a trade-off table.

Each method runs the sentiment example (``examples/sentiment/recipe.yaml``) in its own
subprocess through ``tunesmith run`` with the same seeded sample, the same number of optimizer
steps and the same held-out examples; only ``method.name`` and its learning rate change (each
method family has its own usual learning-rate range, listed in ``LR`` below). The base model is
not re-evaluated here: the demo's report gives its accuracy on the same task.

Printed (JSON) and, with ``--markdown``, as a table: trainable parameters (% of the model),
peak RSS of the run, training tokens/s, held-out accuracy and macro F1, and the size on disk of
what the method saved (adapter or trained weights).

    .venv/bin/python bench/methods.py                    # all methods, defaults below
    .venv/bin/python bench/methods.py --methods lora,ia3 --steps 10 --eval 40   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "sentiment" / "recipe.yaml"
METHODS = ["lora", "dora", "rslora", "ia3", "prompt_tuning", "prefix_tuning", "adapter", "freeze", "bitfit",
           "sparse", "full"]
LR = {"lora": 1e-3, "dora": 1e-3, "rslora": 2.5e-4, "ia3": 1e-2, "prompt_tuning": 3e-2, "prefix_tuning": 1e-2,
      "adapter": 2e-3, "freeze": 3e-4, "bitfit": 3e-3, "sparse": 3e-4, "full": 5e-5}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("tokenizer")
               and p.name not in {"chat_template.jinja", "README.md", "tunesmith.json"})


def run_one(method: str, args, out_root: Path) -> dict:
    overrides = [f"method.name={method}", f"train.lr={LR[method]}", f"output_dir={out_root / method}",
                 f"data.max_examples={args.examples}", f"train.max_steps={args.steps}",
                 f"eval.max_examples={args.eval}", "eval.compare_base=false", "export.merged=false",
                 "export.adapter=false", "export.check_parity=false", "train.eval_every=1000",
                 "train.save_every=1000", "train.early_stopping_patience=null"]
    cmd = [sys.executable, "-m", "tunesmith.cli", "run", str(RECIPE), *overrides]
    t0 = time.perf_counter()
    log = out_root / f"{method}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _, status, usage = os.wait4(proc.pid, 0)      # this child's own peak RSS (KiB on Linux)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        return {"method": method, "error": log.read_text().strip().splitlines()[-1:]}
    run = next((out_root / method).glob("sentiment-*"))
    train = json.loads((run / "train.json").read_text())
    summary = json.loads((run / "eval" / "summary.json").read_text())
    tuned = summary["tuned"]["metrics"]
    return {"method": method, "lr": LR[method],
            "trainable_params": train["trainable_parameters"],
            "trainable_pct": 100 * train["trainable_parameters"] / train["total_parameters"],
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "tokens_per_s": round(train["tokens_per_s"], 1), "train_wall_s": round(train["wall_s"], 1),
            "accuracy": round(tuned.get("accuracy", float("nan")), 4),
            "macro_f1": round(tuned.get("macro_f1", float("nan")), 4),
            "saved_mb": round(dir_size(run / "model") / 2**20, 2), "run_wall_s": round(wall, 1)}


def markdown(rows: list[dict]) -> str:
    lines = ["| method | trainable params | peak RSS | train tok/s | accuracy | macro F1 | saved size |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | |")
            continue
        rss = f"{r['peak_rss_mb'] / 1024:.1f} GB" if r["peak_rss_mb"] else "—"
        lines.append(f"| {r['method']} | {r['trainable_params']:,} ({r['trainable_pct']:.3f}%) | {rss} | "
                     f"{r['tokens_per_s']:.0f} | {100 * r['accuracy']:.1f}% | {100 * r['macro_f1']:.1f}% | "
                     f"{r['saved_mb']:.2f} MB |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--examples", type=int, default=600, help="seeded sample before the split")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per method (batch 8)")
    p.add_argument("--eval", type=int, default=120, help="held-out examples evaluated")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--markdown", action="store_true", help="print a markdown table after the JSON")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tunesmith-methods-") as tmp:
        for method in args.methods.split(","):
            print(f"[bench] {method} …", file=sys.stderr, flush=True)
            rows.append(run_one(method, args, Path(tmp)))
            print(f"[bench] {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "budget": {"examples": args.examples, "steps": args.steps, "batch_size": 8, "eval_examples": args.eval},
              "results": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
