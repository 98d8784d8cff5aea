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
    .venv/bin/python bench/serve_latency.py RUN_DIR --llama-cpp RUN_DIR/export/NAME-f16.gguf \
        --llama-cpp-python /path/to/venv-with-llama-cpp-python-server/bin/python

With ``--llama-cpp GGUF`` the same workloads then run against llama-cpp-python's own OpenAI-compatible server
(``python -m llama_cpp.server``, its own process, as many threads as torch uses here) on that file, and the JSON
gains ``llama_cpp`` and ``tunesmith_vs_llama_cpp_tokens_per_s`` (tunesmith's tokens/s over llama.cpp's, per
workload and client count, both counted as ``text_tokens``: the replies re-tokenised with the model's tokenizer,
so that servers counting end-of-turn tokens or streaming several tokens per chunk compare alike). llama.cpp's
server runs with ``--interrupt_requests False``: by default it cuts a running request short when another
arrives, which leaves concurrent clients with empty replies. Pass the run's exported f16 GGUF: the merged
tuned model, the same weights the tunesmith server runs as adapter-on-base.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
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
    pieces = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            text.append(chunk.choices[0].delta.content)
            pieces += 1
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    # a server that sends no usage in the stream: one streamed piece per token (llama.cpp streams tokens)
    return {"latency": end - t0, "ttft": (first or end) - t0, "tokens": tokens or pieces,
            "tokens_counted": "usage" if tokens else "pieces", "text": "".join(text)}


def batch_histogram(server_url: str) -> tuple[float, float]:
    """tunesmith's batch-size histogram; (0, 0) from a server without it (llama.cpp)."""
    import httpx
    r = httpx.get(server_url + "/metrics")
    return histogram(r.text, "tunesmith_batch_size") if r.status_code == 200 else (0.0, 0.0)


def phase(server_url: str, model_id: str, prompts: list[list[dict]], clients: int, max_tokens: int,
          count_tokens=None) -> dict:
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

    before = batch_histogram(server_url)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = batch_histogram(server_url)
    batches, rows = after[0] - before[0], after[1] - before[1]
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    # the same count on every server: the replies' text re-tokenised (end-of-turn tokens not counted)
    text_tokens = sum(count_tokens(r["text"]) for r in results) if count_tokens else None
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 3),
            "latency_p50_s": round(percentile(lat, 0.5), 3), "latency_p95_s": round(percentile(lat, 0.95), 3),
            "ttft_p50_s": round(percentile(ttft, 0.5), 3), "ttft_p95_s": round(percentile(ttft, 0.95), 3),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2) if wall else None,
            "text_tokens": text_tokens,
            "text_tokens_per_s": round(text_tokens / wall, 2) if wall and text_tokens is not None else None,
            "empty_replies": sum(1 for r in results if not r["text"]),
            "mean_batch_size": round(rows / batches, 2) if batches else None,
            "tokens_counted": sorted({r["tokens_counted"] for r in results}),
            "sample_reply": results[0]["text"][:80] if results else None}


@contextmanager
def llama_cpp_server(python: str, gguf: Path, model_id: str, threads: int, n_ctx: int):
    """llama-cpp-python's OpenAI-compatible server on ``gguf`` in its own process; yields its URL."""
    import httpx
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", model_id, "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(threads), "--n_ctx", str(n_ctx),
           "--interrupt_requests", "False"]    # its default: a new request cuts the running one short
    log = tempfile.TemporaryFile(mode="w+")      # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"llama.cpp server exited ({proc.returncode}): {log.read()[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("llama.cpp server did not start within 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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
    ap.add_argument("--llama-cpp", default=None, metavar="GGUF",
                    help="Also serve this GGUF (e.g. the run's export/*-f16.gguf: the merged tuned model) with "
                         "llama-cpp-python's server and run the same workloads against it.")
    ap.add_argument("--llama-cpp-python", default=sys.executable,
                    help="Python with llama-cpp-python[server] installed (default: this one).")
    ap.add_argument("--llama-cpp-ctx", type=int, default=2048)
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
    from transformers import AutoTokenizer
    from tunesmith.models import resolve
    tokenizer = AutoTokenizer.from_pretrained(resolve(base))

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))
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
    names = [w for w in args.workloads.split(",") if w]

    def run_workloads(url: str) -> tuple[dict, float]:
        """Warm the server up on one task prompt, then every workload at every client count."""
        import openai
        warm = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
        t0 = time.perf_counter()
        one_request(warm, model_id, task_prompts[0], 4)
        warmup_s = time.perf_counter() - t0
        results = {}
        for name in names:
            prompts, max_tokens = workloads[name]
            prompts = [prompts[i % len(prompts)] for i in range(args.requests)]
            results[name] = {str(c): phase(url, model_id, prompts, c, max_tokens, count_tokens) for c in clients}
            results[name]["max_tokens"] = max_tokens
        return results, warmup_s

    import torch
    out["machine"]["torch_threads"] = torch.get_num_threads()
    with BackgroundServer(create_app(settings)) as srv:
        out["results"], warmup_s = run_workloads(srv.url)      # the warm-up loads the base and the adapter
        out["warmup_s"] = round(warmup_s, 2)
    if args.llama_cpp:
        with llama_cpp_server(args.llama_cpp_python, Path(args.llama_cpp), model_id, torch.get_num_threads(),
                              args.llama_cpp_ctx) as url:
            res, _ = run_workloads(url)
        out["llama_cpp"] = {"gguf": args.llama_cpp, "n_threads": torch.get_num_threads(), "results": res}
        out["tunesmith_vs_llama_cpp_tokens_per_s"] = {
            f"{name}@{c}": (round(ts / lc, 3) if ts and lc else None)
            for name in names for c in clients
            for ts, lc in [(out["results"][name][str(c)]["text_tokens_per_s"], res[name][str(c)]["text_tokens_per_s"])]}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
