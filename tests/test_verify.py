"""`tunesmith verify`: artifacts of a tiny run compared with adapter-on-base, including broken ones and a live server."""
from __future__ import annotations

import importlib
import json
import shutil
import socket
import threading
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tiny import sentiment_rows
from tunesmith import pipeline
from tunesmith.cli.run import export as export_command
from tunesmith.cli.verify import app as verify_app
from tunesmith.errors import TunesmithError
from tunesmith.gguf_export import export_run_gguf
from tunesmith.serve.parity import verify_after_export
from tunesmith.verify import verify

verify_mod = importlib.import_module("tunesmith.verify")   # `tunesmith.verify` is the API function
HAS_LLAMA_CPP = verify_mod.llama_cpp_available()[0]


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """A finished tiny LoRA run (adapter + merged model) with an f16 GGUF next to them."""
    root = tmp_path_factory.mktemp("verify-run")
    data = root / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(80)))
    recipe = {
        "name": "tiny", "task": "classification", "objective": {"name": "sft"}, "output_dir": str(root / "runs"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"train": str(data), "format": "labelled", "labels": {"0": "negative", "1": "positive"},
                 "instruction": "Is this positive or negative?", "max_length": 64, "clean": {"near_dedup": False}},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-2, "eval_every": 100, "save_every": 100},
        "eval": {"max_new_tokens": 6, "batch_size": 8, "compare_base": False},
        "export": {"check_parity": False},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = pipeline.run(root / "recipe.yaml")
    export_run_gguf(run, ["f16"])
    return run


def _copy(run, tmp_path):
    dst = tmp_path / run.name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


# ---- a small OpenAI-compatible server answering with the merged model ------------------------------

def _serve(run_dir, model_id, tamper: bool = False):
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = run_dir / "export" / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    seen = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        seen.append(body)
        if body["model"] != model_id:
            return JSONResponse({"error": {"message": f"model {body['model']} not found", "type": "invalid_request_error",
                                           "code": "model_not_found"}}, status_code=404)
        text = tok.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=body["max_tokens"], eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        finish = "stop" if out and out[-1] == tok.eos_token_id else "length"
        content = tok.decode(out, skip_special_tokens=True).strip() + (" (tampered)" if tamper else "")
        return {"id": "x", "object": "chat.completion", "created": 0, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish}]}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}", seen


@pytest.fixture
def fake_server(tiny_run):
    started = []

    def start(tamper=False, model_id=None):
        server, thread, url, seen = _serve(tiny_run, model_id or tiny_run.name, tamper)
        started.append((server, thread))
        return url, seen
    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)


# ---- tests ----------------------------------------------------------------------------------------

def test_all_artifacts_identical_and_report_written(tiny_run, tmp_path, fake_server):
    run = _copy(tiny_run, tmp_path)
    url, seen = fake_server()
    result = verify(run, server_url=url, prompts=5)
    arts = result["artifacts"]
    assert result["prompts"] == 5 and result["max_new_tokens"] == 6
    assert arts["merged"]["status"] == "compared" and arts["merged"]["identical"] == 5
    assert arts["server"]["identical"] == 5 and arts["server"]["mismatches"] == []
    # the server was asked greedily for the run's model id with the same prompts and length
    assert len(seen) == 5 and all(b["model"] == run.name and b["temperature"] == 0 and b["max_tokens"] == 6
                                  for b in seen)
    gguf = arts["tiny-001-f16.gguf"]
    if HAS_LLAMA_CPP:
        assert gguf["status"] == "compared" and gguf["identical"] == 5
        assert gguf["tokenizer_mismatches"] == 0 and gguf["chat_template_matches"] is True
    else:
        assert gguf["status"] == "skipped" and "llama_cpp" in gguf["reason"]
    assert result["ok"] is True and result["compared"] == (3 if HAS_LLAMA_CPP else 2)
    assert result["summary"]["complete"] is HAS_LLAMA_CPP
    assert result["summary"]["text"] == "all 3 artifacts identical" if HAS_LLAMA_CPP else \
        result["summary"]["text"].startswith("2 compared artifacts identical, but 1 skipped")
    saved = json.loads((run / "verify.json").read_text())
    assert saved["ok"] is True and len(saved["reference"]["replies"]) == 5
    assert all(r["finish"] in ("stop", "length") for r in saved["reference"]["replies"])


def test_broken_merged_model_is_reported(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    good = verify(run, prompts=3, print_table=False)
    first = [r["tokens"][0] if r["tokens"] else None for r in good["reference"]["replies"]]
    path = run / "export" / "merged" / "model.safetensors"
    state = load_file(str(path))
    eos = json.loads((run / "export" / "merged" / "config.json").read_text())["eos_token_id"]
    for t in {t if t is not None else eos for t in first}:     # make every reference first token unlikely
        state["lm_head.weight"][t] *= -20
    save_file(state, str(path), metadata={"format": "pt"})
    result = verify(run, prompts=3, print_table=False)
    merged = result["artifacts"]["merged"]
    assert result["ok"] is False and merged["identical"] < 3
    diffs = merged["mismatches"] + merged["stop_differences"]
    assert diffs
    for m in merged["mismatches"]:
        assert m["expected"] != m["got"] and m["first_diff_token"] == 0
        assert m["first_diff_char"] is not None and m["prompt"]
    # the untouched GGUF still matches, so the table pins the problem on the merged folder
    if HAS_LLAMA_CPP:
        assert result["artifacts"]["tiny-001-f16.gguf"]["identical"] == 3
    # the command exits 1 and prints the table
    cli = CliRunner().invoke(verify_app, [str(run), "--prompts", "3"])
    assert cli.exit_code == 1, cli.output
    assert json.loads((run / "verify.json").read_text())["ok"] is False


def test_server_differences_and_errors(tiny_run, tmp_path, fake_server):
    run = _copy(tiny_run, tmp_path)
    url, _ = fake_server(tamper=True)
    assert verify_after_export(run, prompts=2)["ok"] is True      # without a server everything matches
    result = verify(run, server_url=url + "/v1", prompts=2, print_table=False)
    server = result["artifacts"]["server"]
    assert result["ok"] is False and server["identical"] == 0
    m = server["mismatches"][0]
    assert m["got"] == m["expected"] + " (tampered)" and m["first_diff_char"] == len(m["expected"])
    assert "first_diff_token" not in m             # a server gives text only
    url, _ = fake_server(model_id="some-other-model")
    with pytest.raises(TunesmithError, match="HTTP 404"):
        verify(run, server_url=url, prompts=1, print_table=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(TunesmithError, match="not reachable"):
        verify(run, server_url=f"http://127.0.0.1:{dead}", prompts=1, print_table=False)


def test_gguf_skipped_with_reason_without_llama_cpp(tiny_run, tmp_path, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    monkeypatch.setattr(verify_mod, "llama_cpp_available", lambda: (False, "llama_cpp is not installed (test)"))
    result = verify(run, prompts=2, print_table=False)
    assert result["artifacts"]["tiny-001-f16.gguf"] == {
        "kind": "llama.cpp", "path": str(run / "export" / "tiny-001-f16.gguf"), "status": "skipped",
        "reason": "llama_cpp is not installed (test)"}
    assert result["ok"] is True and result["compared"] == 1
    # identical as far as it went, but never "all identical": the summary lists the skipped GGUF
    summary = json.loads((run / "verify.json").read_text())["summary"]
    assert summary["artifacts"]["merged"]["outcome"] == "identical"
    assert summary["artifacts"]["tiny-001-f16.gguf"] == {"outcome": "skipped",
                                                         "reason": "llama_cpp is not installed (test)"}
    assert summary["complete"] is False and "all" not in summary["text"].split()
    assert "1 skipped and not checked: tiny-001-f16.gguf" in summary["text"]


def test_missing_merged_is_skipped_and_untrained_run_is_an_error(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    shutil.rmtree(run / "export" / "merged")
    for p in (run / "export").glob("*.gguf"):
        p.unlink()
    result = verify(run, prompts=1, print_table=False)
    assert result["artifacts"]["merged"]["status"] == "skipped" and result["compared"] == 0
    assert verify_after_export(run) is None        # nothing exported to check at the end of a run
    shutil.rmtree(run / "model")
    with pytest.raises(TunesmithError, match="no trained model"):
        verify(run, prompts=1, print_table=False)
    with pytest.raises(TunesmithError, match="not a tunesmith run"):
        verify(tmp_path, prompts=1)


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama_cpp not installed (optional extra gguf-runtime)")
def test_q8_0_is_compared_and_reported(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    export_run_gguf(run, ["q8_0"])
    result = verify(run, prompts=4, print_table=False)
    q8 = result["artifacts"]["tiny-001-q8_0.gguf"]
    assert q8["status"] == "compared" and q8["prompts"] == 4
    assert q8["identical"] + len(q8["mismatches"]) >= 4 - len(q8["stop_differences"])
    assert result["ok"] is (all(a["identical"] == a["prompts"] for a in result["artifacts"].values()
                                if a["status"] == "compared"))


def test_export_command_writes_gguf_into_the_run(tiny_run, tmp_path):
    import typer

    run = _copy(tiny_run, tmp_path)
    app = typer.Typer()
    app.command()(export_command)          # `tunesmith export RUN --format gguf`
    res = CliRunner().invoke(app, [str(run), "--format", "gguf", "--quant", "q8_0"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["path"] == str(run / "export" / "tiny-001-q8_0.gguf")
    assert (run / "export" / "tiny-001-q8_0.gguf").read_bytes()[:4] == b"GGUF"
    res = CliRunner().invoke(app, [str(run), "--format", "gguf", "--quant", "q4_k"])
    assert isinstance(res.exception, TunesmithError) and "q4_k" in str(res.exception)
    res = CliRunner().invoke(app, [str(run), "--format", "onnx"])
    assert isinstance(res.exception, TunesmithError) and "expected hf or gguf" in str(res.exception)


def test_verify_against_tunesmith_server(tiny_run, tiny_model_dir, tmp_path):
    """The real server (tunesmith.serve) on loopback, serving the run by its directory name."""
    from tunesmith.serve import ServeSettings, create_app
    from tunesmith.serve.background import BackgroundServer
    run = _copy(tiny_run, tmp_path)
    settings = ServeSettings(model=str(tiny_model_dir), runs=[run.parent], api_keys=["k1"], batch_wait_ms=0,
                             default_max_tokens=16)
    with BackgroundServer(create_app(settings)) as srv:
        result = verify(run, server_url=srv.url, api_key="k1", prompts=4, print_table=False)
        with pytest.raises(TunesmithError, match="HTTP 401"):
            verify(run, server_url=srv.url, api_key="wrong", prompts=1, print_table=False)
    server = result["artifacts"]["server"]
    assert server["model"] == run.name and server["prompts"] == 4
    assert server["identical"] == 4, server
    if HAS_LLAMA_CPP:      # the server also lists the run's GGUF export, served by llama.cpp
        served_gguf = result["artifacts"][f"server {run.name}:gguf-f16"]
        assert served_gguf["prompts"] == 4 and served_gguf["identical"] == 4, served_gguf
    assert result["ok"] is True
