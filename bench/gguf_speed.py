#!/usr/bin/env python
"""Generation speed of a run's merged model: llama.cpp (GGUF f16, q8_0) against transformers (fp32).

What it measures
----------------
The run's ``export/merged`` model is converted to GGUF f16 and q8_0 (into a temporary folder;
the run is not written to) and the same ``--prompts`` test prompts of the run (chat template
applied, from its ``data/test.jsonl``) are answered greedily, one prompt at a time, by:

* ``transformers_fp32`` -- ``AutoModelForCausalLM`` in float32, ``model.generate`` with the KV cache;
* ``llama_cpp_f16`` / ``llama_cpp_q8_0`` -- llama-cpp-python on the GGUF files.

Every backend generates exactly ``--max-new-tokens`` tokens per prompt (end-of-turn is ignored
by default: a classifier-style model would otherwise stop after one token and the numbers would
measure prompt processing only). All use ``--threads`` CPU threads. Per backend the JSON gives:

* ``tokens_per_s``        -- new tokens / wall time of the whole generation (prefill included);
* ``decode_tokens_per_s`` -- (new tokens - 1 per prompt) / (wall time - time to first token);
* ``ttft_ms``             -- mean time to the first new token (prefill + one step), measured by
                             a separate one-token generation of the same prompt;
* ``load_s``, ``same_tokens_as_transformers`` (prompts whose ``--max-new-tokens`` tokens all
  equal the fp32 ones) and ``same_reply_as_transformers`` (equal up to the first end-of-turn).

Each backend makes ``--repeat`` timed passes over the prompts and the fastest is reported (all
are listed). Model loading, the GGUF conversion and one warm-up prompt per backend are not timed. The load
average before and after is recorded: other CPU load skews everything.

    .venv/bin/python bench/gguf_speed.py --run runs/sentiment-001
    .venv/bin/python bench/gguf_speed.py --run runs/sentiment-001 --prompts 4 --max-new-tokens 32 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _prompts(run: Path, n: int, tokenizer) -> list[list[int]]:
    from tunesmith.data.prepare import load_splits
    from tunesmith.generation import render_prompt
    splits, _ = load_splits(run / "data")
    chats = [ex.prompt_messages for ex in splits["test"] if ex.messages][:n]
    if not chats:
        sys.exit(f"{run / 'data'}: no chat prompts in the test split")
    return [tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in chats]


def bench_transformers(merged: Path, prompts, max_new: int, ignore_eos: bool, threads: int, repeat: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t
    eos = model.generation_config.eos_token_id
    pad = eos if isinstance(eos, int) else eos[0]
    if ignore_eos:        # end-of-turn becomes an ordinary token (as in llama.cpp below), never suppressed
        model.generation_config.eos_token_id = None

    def gen(ids, n):
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                 pad_token_id=pad, **({} if ignore_eos else {"eos_token_id": eos}))
        return out[0, len(ids):].tolist()

    gen(prompts[0], 4)   # warm-up
    return _timed(gen, prompts, max_new, repeat) | {"load_s": round(load_s, 2), "threads": threads}


def bench_llama_cpp(path: Path, prompts, max_new: int, ignore_eos: bool, threads: int, repeat: int) -> dict:
    import llama_cpp

    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(len(p) for p in prompts) + max_new + 16,
                          n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
    load_s = time.perf_counter() - t
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def gen(ids, n):
        out = []
        for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if not ignore_eos and llama_cpp.llama_vocab_is_eog(vocab, tok):
                out.append(int(tok))
                break
            out.append(int(tok))
            if len(out) >= n:
                break
        return out

    try:
        gen(prompts[0], 4)   # warm-up
        return _timed(gen, prompts, max_new, repeat) | {"load_s": round(load_s, 2), "threads": threads,
                                                 "file_mb": round(path.stat().st_size / 1e6, 1)}
    finally:
        llm.close()


def _timed(gen, prompts, max_new: int, repeat: int) -> dict:
    """Time ``repeat`` passes over the prompts; the best pass is reported (least disturbed by other load)."""
    passes, outputs = [], None
    for _ in range(repeat):
        ttft, wall, new, outs = [], 0.0, 0, []
        for ids in prompts:
            t = time.perf_counter()
            gen(ids, 1)
            ttft.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = gen(ids, max_new)
            wall += time.perf_counter() - t
            new += len(out)
            outs.append(out)
        outputs = outputs or outs
        passes.append((wall, sum(ttft), new))
    wall, ttft, new = min(passes)
    decode_time = wall - ttft
    return {"prompts": len(prompts), "new_tokens": new, "wall_s": round(wall, 3),
            "tokens_per_s": round(new / wall, 1),
            "decode_tokens_per_s": round((new - len(prompts)) / decode_time, 1) if decode_time > 0 else None,
            "ttft_ms": round(1000 * ttft / len(prompts), 1),
            "tokens_per_s_all_passes": [round(n / w, 1) for w, _, n in passes], "_outputs": outputs}


def _reply(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """The tokens up to and including the first end-of-turn: what a chat user would see."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i + 1]
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="run directory with export/merged and data/")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--stop-at-eos", action="store_true", help="stop at end-of-turn instead of always "
                                                                "generating --max-new-tokens")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per backend; the fastest is reported")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from tunesmith.gguf_export import export_gguf
    from tunesmith.models import quiet_transformers
    quiet_transformers()
    merged = args.run / "export" / "merged"
    if not (merged / "config.json").is_file():
        sys.exit(f"{merged}: no merged model")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    from tunesmith.generation import eos_token_ids
    eos_ids = set(eos_token_ids(tokenizer))
    prompts = _prompts(args.run, args.prompts, tokenizer)
    ignore_eos = not args.stop_at_eos
    load_before = os.getloadavg()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="gguf-speed-") as tmp:
        files = {q: Path(export_gguf(merged, Path(tmp) / f"model-{q}.gguf", q)["path"]) for q in ("f16", "q8_0")}
        results["transformers_fp32"] = bench_transformers(merged, prompts, args.max_new_tokens, ignore_eos,
                                                          args.threads, args.repeat)
        for q, path in files.items():
            results[f"llama_cpp_{q}"] = bench_llama_cpp(path, prompts, args.max_new_tokens, ignore_eos, args.threads,
                                                   args.repeat)
    ref = results["transformers_fp32"]["_outputs"]
    for name, r in results.items():
        outs = r.pop("_outputs")
        if name != "transformers_fp32":
            r["same_tokens_as_transformers"] = sum(a == b for a, b in zip(outs, ref))
            r["same_reply_as_transformers"] = sum(_reply(a, eos_ids) == _reply(b, eos_ids) for a, b in zip(outs, ref))
            r["speedup_vs_transformers"] = round(r["tokens_per_s"] / results["transformers_fp32"]["tokens_per_s"], 2)
    import llama_cpp
    import torch
    report = {
        "model": str(merged), "prompts": len(prompts), "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        "max_new_tokens": args.max_new_tokens, "ignore_eos": ignore_eos, "threads": args.threads,
        "repeat": args.repeat,
        "versions": {"torch": torch.__version__, "llama_cpp_python": llama_cpp.__version__},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "notes": "tokens_per_s = new tokens / generation wall time incl. prefill; decode_tokens_per_s excludes the "
                 "time to first token; each prompt is generated alone (batch 1), greedy; the fastest of `repeat` "
                 "passes is reported (tokens_per_s_all_passes lists them all).",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
