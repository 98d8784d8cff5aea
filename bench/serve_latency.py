#!/usr/bin/env python
"""Latency and throughput of `tunesmith serve` on the real model with a fine-tuned run, 1 vs N clients.

Starts the server in this process (uvicorn in a background thread, the run's LoRA adapter on the
shared SmolLM2-135M-Instruct base), warms it up (loads the adapter), then for each client count
sends the same requests with the official ``openai`` client, streaming, from that many threads at
once. Two workloads, both addressed to the run's model id:

* ``task``: the run's own held-out test prompts (sentiment: a one-word answer, then the end-of-turn
  token), i.e. what the fine-tuned model is for; prompt processing dominates.
* ``open``: general questions asking for a few sentences, ``--max-tokens`` each; decoding dominates.

Per workload and client count it prints (JSON) p50/p95 end-to-end latency, p50/p95 time to first
token (first streamed content), aggregate completion tokens/s (all completion tokens over the
phase's wall time), the mean batch size (from /metrics: rows when a batch starts and after each
join of queued requests) and the counts.

    .venv/bin/python bench/serve_latency.py /tmp/fresh4/runs/sentiment-001
    .venv/bin/python bench/serve_latency.py RUN_DIR --requests 8 --clients 1,4 --max-tokens 32
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

OPEN_PROMPTS = ["Write two sentences about the sea.", "Explain what a movie review is.",
                "Give me three tips for a good night's sleep.", "Describe a sunny morning in a small town.",
                "Why do people enjoy going to the cinema?", "What makes a good story?",
                "Describe your favourite meal.", "Explain how a bicycle works."]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def histogram(metrics_text: str, name: str) -> tuple[float, float]:
    """(count, sum) of an unlabelled Prometheus histogram."""
    count = re.search(rf"^{name}_count (\S+)$", metrics_text, re.MULTILINE)
    total = re.search(rf"^{name}_sum (\S+)$", metrics_text, re.MULTILINE)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


def one_request(client, model_id: str, messages: list[dict], max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    text = []
    stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"latency": end - t0, "ttft": (first or end) - t0, "tokens": tokens, "text": "".join(text)}


def phase(server_url: str, model_id: str, prompts: list[list[dict]], clients: int, max_tokens: int) -> dict:
    import httpx
    import openai
    results: list[dict] = []
    lock = threading.Lock()
    queue = list(prompts)

    def worker():
        client = openai.OpenAI(base_url=server_url + "/v1", api_key="bench", max_retries=0, timeout=600)
        while True:
            with lock:
                if not queue:
                    return
                messages = queue.pop(0)
            r = one_request(client, model_id, messages, max_tokens)
            with lock:
                results.append(r)

    before = histogram(httpx.get(server_url + "/metrics").text, "tunesmith_batch_size")
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = histogram(httpx.get(server_url + "/metrics").text, "tunesmith_batch_size")
    batches, rows = after[0] - before[0], after[1] - before[1]
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 3),
            "latency_p50_s": round(percentile(lat, 0.5), 3), "latency_p95_s": round(percentile(lat, 0.95), 3),
            "ttft_p50_s": round(percentile(ttft, 0.5), 3), "ttft_p95_s": round(percentile(ttft, 0.95), 3),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2) if wall else None,
            "mean_batch_size": round(rows / batches, 2) if batches else None,
            "sample_reply": results[0]["text"][:80] if results else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", default="/tmp/fresh4/runs/sentiment-001")
    ap.add_argument("--model", default=None, help="Base model (default: the run recipe's model).")
    ap.add_argument("--requests", type=int, default=12, help="Requests per workload and client count.")
    ap.add_argument("--clients", default="1,4", help="Comma-separated client counts.")
    ap.add_argument("--max-tokens", type=int, default=48, help="Completion limit of the open workload.")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--workloads", default="task,open")
    ap.add_argument("--out", default=None, help="Also write the JSON here.")
    args = ap.parse_args()

    from tunesmith.models import quiet_transformers
    from tunesmith.pipeline import Run
    from tunesmith.serve import ServeSettings, create_app
    from tunesmith.serve.background import BackgroundServer
    quiet_transformers()
    run = Run(Path(args.run_dir))
    model_id = run.path.name
    base = args.model or run.recipe.model.name
    settings = ServeSettings(model=base, runs=[run.path], max_batch_size=args.max_batch_size,
                             batch_wait_ms=args.batch_wait_ms, api_keys=[])
    test = [json.loads(line) for line in (run.path / "data" / "test.jsonl").read_text().splitlines() if line.strip()]
    task_prompts = [[m for m in ex["messages"] if m["role"] != "assistant"] for ex in test if ex.get("messages")]
    system = run.recipe.data.system_prompt
    open_prompts = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
                    for q in OPEN_PROMPTS]
    workloads = {"task": (task_prompts, 8), "open": (open_prompts, args.max_tokens)}
    clients = [int(c) for c in args.clients.split(",")]
    out = {"run": str(run.path), "model_id": model_id, "base": base, "requests": args.requests,
           "max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
           "notes": "server and clients in one process (uvicorn thread + client threads); greedy decoding; "
                    "TTFT = first streamed content; tokens/s = completion tokens / phase wall time; "
                    "mean_batch_size = mean of the tunesmith_batch_size observations (rows when a batch "
                    "starts and after each join of queued requests)",
           "results": {}}
    with BackgroundServer(create_app(settings)) as srv:
        import torch
        out["machine"]["torch_threads"] = torch.get_num_threads()
        import openai
        warm = openai.OpenAI(base_url=srv.url + "/v1", api_key="bench", max_retries=0, timeout=600)
        t0 = time.perf_counter()
        one_request(warm, model_id, task_prompts[0], 4)          # loads the base and the adapter
        out["warmup_s"] = round(time.perf_counter() - t0, 2)
        for name in [w for w in args.workloads.split(",") if w]:
            prompts, max_tokens = workloads[name]
            prompts = [prompts[i % len(prompts)] for i in range(args.requests)]
            out["results"][name] = {str(c): phase(srv.url, model_id, prompts, c, max_tokens) for c in clients}
            out["results"][name]["max_tokens"] = max_tokens
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
