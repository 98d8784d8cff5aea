"""`tunesmith verify RUN_DIR`: greedy parity of a run's artifacts (merged, GGUF, live server) with adapter-on-base."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer

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

    from .eval.generate import eos_token_ids, pad_token_id
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


# ---- the run-level check -------------------------------------------------------------------------

def _tuned_model(run, tokenizer, device: str):
    """Adapter (or trained weights) on a fresh base, exactly as the pipeline reloads it for evaluation."""
    from . import methods, objectives, pipeline
    session = SimpleNamespace(run=run, device=device, tokenizer=tokenizer,
                              method=methods.get(run.recipe.method.name),
                              objective=objectives.from_recipe(run.recipe))
    return pipeline._load_tuned(session)


def verify(run_dir: str | Path, *, server_url: str | None = None, api_key: str | None = None,
           prompts: int = 8, max_new_tokens: int | None = None, n_threads: int | None = None,
           print_table: bool = True) -> dict:
    """Run the run's first ``prompts`` test prompts through every artifact and compare greedy replies.

    The reference is the adapter (or trained weights) on the base model; compared are
    ``export/merged`` (plain transformers), each ``export/*.gguf`` (llama.cpp, skipped with the
    reason when llama_cpp is not installed) and, with ``server_url``, a live OpenAI-compatible
    server asked for the run's model id (the run directory name) and for the run's GGUF variants
    (``RUN:gguf-TYPE``) when its model list has them. Writes ``verify.json`` in the
    run directory; ``ok`` is true when every compared artifact gave identical replies.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data.prepare import load_splits
    from .eval.generate import render_prompt
    from .models import quiet_transformers
    from .pipeline import Run, _device

    run = Run(Path(run_dir))
    r = run.recipe
    if r.objective.name == "classification":
        raise TunesmithError("verify compares generated replies; a classification run predicts labels with a "
                             "head and exports no generative model", file=str(run.path))
    if not (run.path / "model").is_dir():
        raise TunesmithError("run has no trained model; run `tunesmith train` first", file=str(run.path))
    if prompts < 1:
        raise TunesmithError("expected at least 1 prompt", field="--prompts")
    quiet_transformers()
    splits, _ = load_splits(run.path / "data")
    chats = [ex.prompt_messages for ex in splits["test"] if ex.messages][:prompts]
    if not chats:
        raise TunesmithError("the run's test split has no chat prompts to verify with", file=str(run.path / "data"))
    max_new = max_new_tokens or r.eval.max_new_tokens
    tokenizer = AutoTokenizer.from_pretrained(run.path / "model")
    texts = [render_prompt(tokenizer, m) for m in chats]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    device = _device(r)

    t0 = time.perf_counter()
    tuned = _tuned_model(run, tokenizer, device)
    reference = transformers_replies(tuned, tokenizer, prompt_ids, max_new)
    del tuned
    artifacts: dict[str, dict] = {}

    merged_dir = run.path / "export" / "merged"
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
    for path in sorted((run.path / "export").glob("*.gguf")):
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
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(run.path / "verify.json", result)
    if print_table:
        print_report(result)
    return result


def verify_live(run_dir: str | Path, *, prompts: int = 8, max_new_tokens: int | None = None,
                print_table: bool = True) -> dict:
    """``verify`` with the live-server check against tunesmith's own server, started on loopback for
    the run (base model + this run) and stopped afterwards."""
    from .pipeline import Run
    from .serve import ServeSettings, create_app
    from .serve.background import BackgroundServer
    run = Run(Path(run_dir))
    settings = ServeSettings(model=run.recipe.model.name, runs=[run.path], api_keys=[])
    with BackgroundServer(create_app(settings)) as srv:
        return verify(run.path, server_url=srv.url, prompts=prompts, max_new_tokens=max_new_tokens,
                      print_table=print_table)


def verify_after_export(run_dir: str | Path, prompts: int = 8, live: bool = True) -> dict | None:
    """The end-of-run check (``export.verify``): verify when there is something to compare, else None.

    Nothing to compare: a classification run, a run whose test split has no chat prompts
    (plain-text data), or no merged model and no GGUF file in ``export/``.
    """
    from .data.prepare import load_splits
    from .pipeline import Run
    run = Run(Path(run_dir))
    export = run.path / "export"
    if run.recipe.objective.name == "classification" or not (
            (export / "merged" / "config.json").is_file() or any(export.glob("*.gguf"))):
        return None
    splits, _ = load_splits(run.path / "data")
    if not any(ex.messages for ex in splits["test"]):
        return None
    return verify_live(run.path, prompts=prompts) if live else verify(run.path, prompts=prompts)


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
    console.print("[green]verify: all compared artifacts identical[/green]" if result["ok"]
                  else "[red]verify: differences found[/red]")


def verify_command(run_dir: str = typer.Argument(..., help="Run directory to check."),
                   server: Optional[str] = typer.Option(None, "--server", help="Also check a live OpenAI-compatible "
                                                        "server at this URL (e.g. http://127.0.0.1:8000)."),
                   api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNESMITH_API_KEY",
                                                         help="Bearer token for --server."),
                   prompts: int = typer.Option(8, "--prompts", help="Test prompts to compare."),
                   max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                                help="Reply length (default: eval.max_new_tokens)."),
                   live: bool = typer.Option(False, "--live", help="Start tunesmith's own server on loopback for "
                                                                   "the run and check it too.")):
    """Check that the merged model, GGUF files and a live server answer exactly like adapter-on-base."""
    if live and server:
        from .errors import TunesmithError
        raise TunesmithError("use --server URL or --live, not both", field="--live")
    if live:
        result = verify_live(run_dir, prompts=prompts, max_new_tokens=max_new_tokens)
    else:
        result = verify(run_dir, server_url=server, api_key=api_key, prompts=prompts, max_new_tokens=max_new_tokens)
    if not result["ok"]:
        raise typer.Exit(1)


app = typer.Typer(add_completion=False, help="Artifact parity checks.")
app.command("verify")(verify_command)
