"""Batched greedy generation (tunesmith.generation.generate) against Hugging Face batch-1 greedy, same prompts.

Prompts: the `router` task of the quality benchmark (a 16-label system prompt shared by every prompt, a
health-news post each) and, with ``--short``, the same posts without the system prompt. Three ways, each on
the same prompts and answers compared:

* ``hf_batch1``     -- ``model.generate`` one prompt at a time (what a plain loop over a test set does);
* ``batched``       -- tunesmith's batches, the shared prompt prefix computed once per batch;
* ``batched_no_prefix`` -- the same batches left-padded, every row computing its whole prompt.

Prints one JSON object: seconds, prompt and new tokens, speed-ups over ``hf_batch1`` and whether the
replies agree.

    .venv/bin/python bench/generate_speed.py --prompts 48 --max-new-tokens 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--short", action="store_true", help="no shared system prompt")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args(argv)

    import torch

    import quality_tasks
    from tunesmith import generation, models

    folder = Path(tempfile.mkdtemp(prefix="gen-speed-"))
    quality_tasks.build_router(folder, args.prompts, 16)
    posts = [json.loads(line)["text"] for line in (folder / "train.jsonl").open()][:args.prompts]
    system = [] if args.short else [{"role": "system", "content": quality_tasks.ROUTER_SYSTEM}]
    prompts = [system + [{"role": "user", "content": "Which outlet posted this? Answer with the outlet's handle "
                                                     f"only.\n\n{p}"}] for p in posts]
    model, tok = models.load(args.model)
    model.eval()
    texts = [generation.render_prompt(tok, p) for p in prompts]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos, pad = generation.eos_token_ids(tok, model), generation.pad_token_id(tok)

    def hf_batch1() -> list[str]:
        out = []
        with torch.inference_mode():
            for r in rows:
                ids = torch.tensor([r])
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=args.max_new_tokens, pad_token_id=pad, eos_token_id=eos)
                out.append(tok.decode(gen[0, len(r):], skip_special_tokens=True).strip())
        return out

    def batched() -> list[str]:
        return generation.generate(model, tok, prompts, args.max_new_tokens, batch_size=args.batch_size)

    def batched_no_prefix() -> list[str]:
        old, generation.SHARED_PREFIX_MIN = generation.SHARED_PREFIX_MIN, 10**9
        try:
            return batched()
        finally:
            generation.SHARED_PREFIX_MIN = old

    batched()           # warm-up (first-call allocations)
    result = {"prompts": len(prompts), "prompt_tokens_mean": sum(map(len, rows)) / len(rows),
              "shared_prefix_tokens": generation.common_prefix(rows), "max_new_tokens": args.max_new_tokens,
              "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "load_before": os.getloadavg()[0], "runs": {}}
    replies = {}
    for name, fn in (("hf_batch1", hf_batch1), ("batched", batched), ("batched_no_prefix", batched_no_prefix)):
        t0 = time.perf_counter()
        replies[name] = fn()
        result["runs"][name] = {"seconds": round(time.perf_counter() - t0, 2)}
    base = result["runs"]["hf_batch1"]["seconds"]
    for name, run in result["runs"].items():
        run["speedup_vs_hf_batch1"] = round(base / run["seconds"], 2)
        run["same_replies_as_hf_batch1"] = sum(a == b for a, b in zip(replies[name], replies["hf_batch1"]))
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
