"""Dashboard runs-list load time with many runs: GET /ui/ (the page) and /ui/runs/rows (the fragment it
refreshes every few seconds), cold (first request after start) and warm, over a real uvicorn server.

    .venv/bin/python bench/dashboard_load.py [--runs 200] [--requests 20]

Writes N synthetic finished runs in tunesmith's on-disk format (recipe, run record, metrics, train.json,
eval summary, report, exported adapter: what tests/test_dashboard.py's ``make_run`` writes) into a
temporary folder and prints one JSON object (milliseconds). Target: p95 under 300 ms with 200 runs."""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import yaml


def make_run(root: Path, name: str, i: int, steps: int = 60) -> None:
    path = root / name
    (path / "eval").mkdir(parents=True)
    lr = 1e-4 * (1 + i % 7)
    created = f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00"
    recipe = {"name": name.rsplit("-", 1)[0], "task": "classification", "output_dir": str(root),
              "model": {"name": "smollm2-135m-instruct"}, "method": {"name": ("lora", "dora", "ia3")[i % 3], "r": 8},
              "objective": {"name": "sft"}, "train": {"epochs": 2, "batch_size": 8, "lr": lr, "grad_accum": 1}}
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    with open(path / "metrics.jsonl", "w", encoding="utf-8") as f:
        for s in range(1, steps + 1):
            loss = 0.3 + 2.7 * math.exp(-s * lr * 100)
            f.write(json.dumps({"type": "train", "step": s, "loss": loss, "lr": lr, "grad_norm": 1.0,
                                "tokens": 256, "tokens_per_s": 500.0}) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"type": "eval", "step": s, "val_loss": loss * 1.1}) + "\n")
    stages = {"prepare": {"finished": created, "counts": {"train": 800, "validation": 100, "test": 100}},
              "train": {"finished": created, "steps": steps, "wall_s": 120.0 + i},
              "eval": {"finished": created}, "run": {"finished": created, "wall_s": 300.0 + i}}
    (path / "train.json").write_text(json.dumps({"steps": steps, "total_steps": steps, "wall_s": 120.0 + i,
                                                 "tokens_per_s": 500.0, "best_step": steps}))
    (path / "eval" / "summary.json").write_text(json.dumps(
        {"base": {"metrics": {"accuracy": 0.45}}, "tuned": {"metrics": {"accuracy": 0.6 + (i % 30) / 100}}}))
    (path / "report.html").write_text("<!doctype html><h1>Evaluation report</h1>")
    (path / "export" / "adapter").mkdir(parents=True)
    (path / "export" / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    (path / "run.json").write_text(json.dumps({"created": created, "versions": {}, "stages": stages}))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args(argv)
    import httpx

    from tunesmith.serve import ServeSettings
    from tunesmith.serve.app import create_app
    from tunesmith.serve.background import BackgroundServer
    with tempfile.TemporaryDirectory(prefix="dashboard-load-") as tmp:
        root = Path(tmp) / "runs"
        for i in range(args.runs):
            make_run(root, f"bench-{i:04d}-001", i)
        app = create_app(ServeSettings(model="not-loaded", runs=[root], api_keys=[]))
        out: dict = {"runs": args.runs, "requests": args.requests}
        with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            for name, path in (("page", "/ui/"), ("rows", "/ui/runs/rows")):
                times = []
                for _ in range(args.requests + 1):
                    t0 = time.perf_counter()
                    r = c.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200 and r.text.count("/ui/run/bench-") >= args.runs, (path, r.status_code)
                warm = times[1:]
                out[name] = {"cold_ms": round(times[0], 1), "p50_ms": round(statistics.median(warm), 1),
                             "p95_ms": round(percentile(warm, 95), 1), "max_ms": round(max(warm), 1)}
        out["under_300ms"] = all(out[k]["p95_ms"] < 300 for k in ("page", "rows"))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
