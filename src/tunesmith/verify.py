"""`tunesmith verify RUN_DIR`: greedy parity of a run's artifacts (merged, GGUF, live server) with adapter-on-base."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import TunesmithError
from .fsutil import atomic_write_json


@dataclass
class Reply:
    """One greedy reply: its text, token ids (None where the source gives only text) and why it ended."""
    text: str
    tokens: list[int] | None
    finish: str            # "stop" (end-of-turn / EOS) or "length" (max_new_tokens reached)


# ---- generators, one per kind of artifact --------------------------------------------------------

def _finish(tokens: list[int], eos: Sequence[int]) -> tuple[list[int], str]:
    if tokens and tokens[-1] in eos:
        return tokens[:-1], "stop"
    return tokens, "length"


def transformers_replies(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[Reply]:
    """Greedy replies of a transformers model, one unpadded prompt at a time (no batching effects)."""
    import torch

    from .generation import eos_token_ids, pad_token_id
    eos = eos_token_ids(tokenizer, model)
    device = next(model.parameters()).device
    model.eval()
    out: list[Reply] = []
    with torch.inference_mode():
        for ids in prompt_ids:
            x = torch.tensor([ids], device=device)
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=pad_token_id(tokenizer), use_cache=True)
            tokens, finish = _finish(gen[0, len(ids):].tolist(), eos)
            out.append(Reply(tokenizer.decode(tokens, skip_special_tokens=True).strip(), tokens, finish))
    return out


def llama_cpp_available() -> tuple[bool, str]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return False, f"llama_cpp is not installed ({e}); install the `gguf-runtime` extra (llama-cpp-python)"
    return True, ""


def llama_cpp_replies(gguf_path: Path, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
                      prompt_texts: list[str] | None = None,
                      n_threads: int | None = None) -> tuple[list[Reply], dict]:
    """Greedy replies of llama.cpp on a GGUF file, fed the same prompt token ids.

    Generation stops at any of llama.cpp's end-of-generation tokens (what a llama.cpp user
    gets). Also reports whether llama.cpp tokenises each rendered prompt to the same ids and
    whether the file's chat template equals the run's (with ``prompt_texts``, the rendered
    prompts).
    """
    import llama_cpp

    n_ctx = max(256, max(len(p) for p in prompt_ids) + max_new_tokens + 8)
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=n_threads, verbose=False, seed=0)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        replies, tokenizer_mismatches = [], 0
        for i, ids in enumerate(prompt_ids):
            if prompt_texts is not None and \
                    llm.tokenize(prompt_texts[i].encode("utf-8"), add_bos=False, special=True) != list(ids):
                tokenizer_mismatches += 1
            tokens, finish = [], "length"
            for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                if llama_cpp.llama_vocab_is_eog(vocab, t):
                    finish = "stop"
                    break
                tokens.append(int(t))
                if len(tokens) >= max_new_tokens:
                    break
            replies.append(Reply(tokenizer.decode(tokens, skip_special_tokens=True).strip(), tokens, finish))
        extra = {"tokenizer_mismatches": tokenizer_mismatches if prompt_texts is not None else None,
                 "chat_template_matches": llm.metadata.get("tokenizer.chat_template") == tokenizer.chat_template}
    finally:
        llm.close()
    return replies, extra


def _v1(server_url: str) -> str:
    base = server_url.rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


def served_ids(server_url: str, run_id: str, api_key: str | None = None) -> list[str]:
    """The run's id, then the ids of its GGUF variants (``RUN:gguf-TYPE``) when the server lists them."""
    import httpx
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        listing = httpx.get(f"{_v1(server_url)}/models", headers=headers, timeout=30).json().get("data", [])
        ids = [m["id"] for m in listing if isinstance(m, dict) and "id" in m]
    except (httpx.HTTPError, ValueError, AttributeError):
        ids = []             # no usable listing: ask for the run id alone (its errors are reported there)
    return [run_id] + sorted(i for i in ids if i.startswith(f"{run_id}:gguf-"))


def server_replies(server_url: str, model_id: str, prompts: list[list[dict]], max_new_tokens: int,
                   api_key: str | None = None, timeout: float = 120.0) -> list[Reply]:
    """Replies of a live OpenAI-compatible server (chat completions, temperature 0)."""
    import httpx
    url = f"{_v1(server_url)}/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out: list[Reply] = []
    with httpx.Client(timeout=timeout) as client:
        for msgs in prompts:
            try:
                r = client.post(url, headers=headers, json={"model": model_id, "messages": msgs,
                                                            "temperature": 0, "max_tokens": max_new_tokens})
            except httpx.HTTPError as e:
                raise TunesmithError(f"server not reachable: {e}", field="--server") from None
            if r.status_code != 200:
                raise TunesmithError(f"server answered HTTP {r.status_code}: {r.text[:200]}", field="--server")
            choice = r.json()["choices"][0]
            out.append(Reply((choice["message"].get("content") or "").strip(), None,
                             "length" if choice.get("finish_reason") == "length" else "stop"))
    return out


# ---- comparison ----------------------------------------------------------------------------------

def _first_diff(a: Sequence, b: Sequence) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(reference: list[Reply], got: list[Reply], prompts: list[list[dict]]) -> dict:
    """Identical count, text mismatches (with the first differing character/token) and stop differences."""
    mismatches, stops, identical = [], [], 0
    for msgs, ref, out in zip(prompts, reference, got):
        prompt = msgs[-1]["content"]
        same_text = ref.text == out.text
        if same_text and ref.finish == out.finish:
            identical += 1
        if not same_text:
            row = {"prompt": prompt, "expected": ref.text, "got": out.text,
                   "first_diff_char": _first_diff(ref.text, out.text)}
            if ref.tokens is not None and out.tokens is not None:
                row["first_diff_token"] = _first_diff(ref.tokens, out.tokens)
            mismatches.append(row)
        if ref.finish != out.finish:
            stops.append({"prompt": prompt, "expected": ref.finish, "got": out.finish})
    return {"status": "compared", "prompts": len(got), "identical": identical, "mismatches": mismatches,
            "stop_differences": stops}


def outcome(artifact: dict) -> dict:
    """One artifact as ``identical`` / ``different`` / ``skipped``, with the detail or the reason."""
    if artifact.get("status") != "compared":
        return {"outcome": "skipped", "reason": artifact.get("reason") or "not compared"}
    prompts, same = artifact["prompts"], artifact["identical"]
    if same == prompts:
        return {"outcome": "identical", "detail": f"{same}/{prompts} prompts identical"}
    detail = f"{same}/{prompts} prompts identical, {len(artifact.get('mismatches', []))} text mismatches, " \
             f"{len(artifact.get('stop_differences', []))} stop differences"
    return {"outcome": "different", "detail": detail}


def summarize(artifacts: dict[str, dict]) -> dict:
    """Every artifact's outcome, the counts, and one sentence that never calls a partial check complete."""
    outcomes = {name: outcome(a) for name, a in artifacts.items()}
    names = {k: [n for n, o in outcomes.items() if o["outcome"] == k] for k in ("identical", "different", "skipped")}
    same, diff, skipped = (len(names[k]) for k in ("identical", "different", "skipped"))
    if diff:
        text = f"differences found: {', '.join(names['different'])} ({diff} of {same + diff} compared differ)"
    elif not same:
        text = "nothing compared: " + ("every artifact was skipped" if skipped else "no artifacts to compare")
    elif skipped:
        text = (f"{same} compared artifact{'s' if same > 1 else ''} identical, but {skipped} skipped and not "
                f"checked: {', '.join(names['skipped'])}")
    else:
        text = f"all {same} artifact{'s' if same > 1 else ''} identical"
    return {"artifacts": outcomes, "identical": same, "different": diff, "skipped": skipped,
            "complete": not skipped and bool(same + diff), "text": text}


def summary_lines(summary: dict) -> list[tuple[str, str]]:
    """The closing lines, one per artifact then the verdict, each with its outcome (for colour)."""
    lines = []
    for name, o in summary["artifacts"].items():
        why = o.get("reason") if o["outcome"] == "skipped" else o.get("detail")
        lines.append((f"  {name}: {o['outcome']}" + (f" ({why})" if why else ""), o["outcome"]))
    verdict = "different" if summary["different"] else "identical" if summary["complete"] else "skipped"
    lines.append((f"verify: {summary['text']}", verdict))
    return lines


# ---- the run-level check -------------------------------------------------------------------------

def verify(run_dir: str | Path, *, server_url: str | None = None, api_key: str | None = None,
           prompts: int = 8, max_new_tokens: int | None = None, n_threads: int | None = None,
           print_table: bool = True) -> dict:
    """Run the run's first ``prompts`` test prompts through every artifact and compare greedy replies.

    The reference is the adapter (or trained weights) on the base model; compared are
    ``export/merged`` (plain transformers), each ``export/*.gguf`` (llama.cpp, skipped with the
    reason when llama_cpp is not installed) and, with ``server_url``, a live OpenAI-compatible
    server asked for the run's model id (the run directory name) and for the run's GGUF variants
    (``RUN:gguf-TYPE``) when its model list has them. Writes ``verify.json`` in the
    run directory; ``ok`` is true when every compared artifact gave identical replies, and
    ``summary`` (:func:`summarize`) lists each artifact as identical / different / skipped (with
    the reason) and says whether the check was ``complete`` (nothing skipped).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data.prepare import load_splits
    from .generation import render_prompt
    from .models import quiet_transformers
    from . import objectives
    from .rundir import Run, resolve_device
    from .tuned import load_tuned

    run = Run(Path(run_dir))
    r = run.recipe
    if not objectives.OBJECTIVES[r.objective.name].generates_text:
        raise TunesmithError("verify compares generated replies; a classification run predicts labels with a "
                             "head and exports no generative model", file=str(run.path))
    if not run.model_dir.is_dir():
        raise TunesmithError("run has no trained model; run `tunesmith train` first", file=str(run.path))
    if prompts < 1:
        raise TunesmithError("expected at least 1 prompt", field="--prompts")
    quiet_transformers()
    splits, _ = load_splits(run.data_dir)
    chats = [ex.prompt_messages for ex in splits["test"] if ex.messages][:prompts]
    if not chats:
        raise TunesmithError("the run's test split has no chat prompts to verify with", file=str(run.data_dir))
    max_new = max_new_tokens or r.eval.max_new_tokens
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    texts = [render_prompt(tokenizer, m) for m in chats]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    device = resolve_device(r.train.device)

    t0 = time.perf_counter()
    tuned, _ = load_tuned(run, device, tokenizer=tokenizer)
    reference = transformers_replies(tuned, tokenizer, prompt_ids, max_new)
    del tuned
    artifacts: dict[str, dict] = {}

    merged_dir = run.merged_dir
    if (merged_dir / "config.json").is_file():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).to(device)
        artifacts["merged"] = {"kind": "transformers", "path": str(merged_dir),
                               **compare(reference, transformers_replies(merged, tokenizer, prompt_ids, max_new),
                                         chats)}
        del merged
    else:
        artifacts["merged"] = {"kind": "transformers", "path": str(merged_dir), "status": "skipped",
                               "reason": "no merged model in export/ (method or objective not mergeable, or "
                                         "export.merged is false)"}

    available, why = llama_cpp_available()
    for path in run.gguf_files():
        entry = {"kind": "llama.cpp", "path": str(path)}
        if not available:
            artifacts[path.name] = {**entry, "status": "skipped", "reason": why}
            continue
        replies, extra = llama_cpp_replies(path, tokenizer, prompt_ids, max_new, texts, n_threads=n_threads)
        artifacts[path.name] = {**entry, **compare(reference, replies, chats), **extra}

    if server_url:
        for model_id in served_ids(server_url, run.path.name, api_key):
            replies = server_replies(server_url, model_id, chats, max_new, api_key)
            key = "server" if model_id == run.path.name else f"server {model_id}"
            artifacts[key] = {"kind": "openai-server", "path": server_url, "model": model_id,
                              **compare(reference, replies, chats)}

    compared = {k: v for k, v in artifacts.items() if v["status"] == "compared"}
    result = {
        "run": str(run.path), "prompts": len(chats), "max_new_tokens": max_new,
        "reference": {"kind": "adapter-on-base", "method": r.method.name,
                      "replies": [asdict(x) for x in reference]},
        "artifacts": artifacts,
        "compared": len(compared),
        "ok": all(v["identical"] == v["prompts"] for v in compared.values()),
        "summary": summarize(artifacts),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(run.verify_json, result)
    if print_table:
        print_report(result)
    return result


def print_report(result: dict) -> None:
    """A rich table: one row per artifact with identical count, mismatches and stop differences."""
    from rich.table import Table

    from .train.progress import console
    table = Table(title=f"verify {result['run']} ({result['prompts']} prompts, "
                        f"max_new_tokens {result['max_new_tokens']}, reference: adapter-on-base)")
    for col in ("artifact", "runtime", "identical", "mismatches", "stop differences", "note"):
        table.add_column(col, overflow="fold")
    for name, a in result["artifacts"].items():
        if a["status"] != "compared":
            table.add_row(name, a["kind"], "-", "-", "-", f"skipped: {a['reason']}")
            continue
        note = ""
        if a.get("tokenizer_mismatches"):
            note += f"{a['tokenizer_mismatches']} prompt(s) tokenised differently by llama.cpp; "
        if a.get("chat_template_matches") is False:
            note += "chat template differs; "
        style = "green" if a["identical"] == a["prompts"] else "red"
        table.add_row(name, a["kind"], f"[{style}]{a['identical']}/{a['prompts']}[/{style}]",
                      str(len(a["mismatches"])), str(len(a["stop_differences"])), note.rstrip("; "))
    console.print(table)
    for name, a in result["artifacts"].items():
        for m in a.get("mismatches", [])[:3]:
            console.print(f"[red]{name}[/red] differs at char {m['first_diff_char']}"
                          + (f" / token {m['first_diff_token']}" if m.get("first_diff_token") is not None else "")
                          + f": prompt {m['prompt'][:60]!r}\n  expected {m['expected'][:80]!r}\n"
                            f"  got      {m['got'][:80]!r}")
    summary = result.get("summary") or summarize(result["artifacts"])
    colour = {"identical": "green", "different": "red", "skipped": "yellow"}
    for line, outcome in summary_lines(summary):
        console.print(f"[{colour[outcome]}]{line}[/{colour[outcome]}]" if outcome in colour else line)

