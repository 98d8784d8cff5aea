"""No request can hurt another: sampling parameters checked before batching, one sequence's failure
isolated, body-size limits, nested JSON, tokenisation outside shared locks, files in use kept."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from jobs_util import chat_rows, jsonl, settings_for
from tiny import make_model
from tunesmith.generation import eos_token_ids, pad_token_id
from tunesmith.serve import ServeSettings
from tunesmith.serve.app import create_app
from tunesmith.serve.background import BackgroundServer
from tunesmith.serve.engine import Event, GenerationRequest, SamplingParams, TokenText, decode_batch

USER = [{"role": "user", "content": "The movie was wonderful and the actors were great."}]
BODY_MB = 1.0
UPLOAD_BYTES = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    from tunesmith.jobs.app import JobsParts
    tmp = tmp_path_factory.mktemp("isolation")
    parts = JobsParts(settings_for(f"sqlite:///{tmp / 'jobs.db'}", tmp, tiny_model_dir,
                                   max_upload_bytes=UPLOAD_BYTES))
    settings = ServeSettings(model=str(tiny_model_dir), model_id="tiny-base", api_keys=[], batch_wait_ms=80,
                             max_batch_size=16, default_max_tokens=8, max_body_mb=BODY_MB)
    with BackgroundServer(create_app(settings, sources=parts.sources, routers=parts.routers)) as srv:
        yield srv


def post(server, path: str, body=None, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kw) if body is not None else \
        httpx.post(server.url + path, timeout=60, **kw)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def chat_body(**kw) -> dict:
    return {"model": "tiny-base", "messages": USER, "max_tokens": 6, **kw}


# ---- one client cannot poison a shared batch ---------------------------------------------------------------

def test_one_poisoned_seed_among_twelve_concurrent_sampled_requests(server):
    """The issue's script: 12 concurrent sampled chats, one with seed 2**64 -> one 400, eleven 200s."""
    results: list = [None] * 12
    barrier = threading.Barrier(12)

    def client(i: int) -> None:
        body = chat_body(temperature=1.0, top_p=0.9, seed=2 ** 64 if i == 5 else 1000 + i, max_tokens=8)
        barrier.wait()
        results[i] = post(server, "/v1/chat/completions", body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    statuses = [r.status_code for r in results]
    assert statuses.count(400) == 1 and statuses.count(200) == 11, statuses
    err = error_of(results[5], 400)
    assert err["param"] == "seed" and err["type"] == "invalid_request_error"
    for r in results[:5] + results[6:]:
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "length") and r.json()["usage"]["completion_tokens"] >= 1


def test_sampling_parameters_are_checked_before_batching(server):
    r = post(server, "/v1/chat/completions", chat_body(logit_bias={"100000": 5}))
    err = error_of(r, 400)
    assert err["param"] == "logit_bias" and "100000" in err["message"] and "vocabulary" in err["message"]
    for bias in ({"-3": 1}, {"abc": 1}, {"²": 1}, {"5": 101}, {"5": "NaN"}, {str(i): 1 for i in range(1025)},
                 {"9" * 5000: 1}):
        assert error_of(post(server, "/v1/chat/completions", chat_body(logit_bias=bias)), 400)["param"] == "logit_bias"
    r = post(server, "/v1/completions", {"model": "tiny-base", "prompt": "Hi", "logit_bias": {"4000": 1}})
    assert error_of(r, 400)["param"] == "logit_bias"
    for seed in (2 ** 63, -(2 ** 63) - 1, 2 ** 64):
        assert error_of(post(server, "/v1/chat/completions", chat_body(seed=seed)), 400)["param"] == "seed"
    for bad in ({"temperature": -0.1}, {"top_p": 0}, {"n": 129}, {"max_tokens": 0}, {"stop": ["x" * 1025]},
                {"stop": ["a"] * 5}, {"top_logprobs": 21, "logprobs": True}, {"presence_penalty": 2.5},
                {"response_format": {"type": [1]}}):
        assert error_of(post(server, "/v1/chat/completions", chat_body(**bad)), 400)["param"], bad
    # accepted edges: int64 seeds, a token id biased, a temperature so small it decodes greedily
    greedy = post(server, "/v1/chat/completions", chat_body(temperature=0)).json()["choices"][0]["message"]
    for ok in ({"seed": 2 ** 63 - 1, "n": 2}, {"seed": -(2 ** 63)}, {"logit_bias": {"42": 100}, "temperature": 0},
               {"top_logprobs": 20, "logprobs": True}):
        assert post(server, "/v1/chat/completions", chat_body(**ok)).status_code == 200, ok
    tiny_t = post(server, "/v1/chat/completions", chat_body(temperature=1e-300, seed=3)).json()
    assert tiny_t["choices"][0]["message"] == greedy
    biased = post(server, "/v1/chat/completions", chat_body(logit_bias={"42": 100}, temperature=0)).json()
    assert biased["usage"]["completion_tokens"] == 6       # token 42 every step: never the end of the reply


def _ids(tok, text: str) -> list[int]:
    return tok(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                       tokenize=False), add_special_tokens=False)["input_ids"]


def test_a_failing_sequence_fails_only_its_request(tokenizer):
    """Seeding, stop handling and prefill failures inside a shared batch end that request only."""
    model = make_model(tokenizer)
    dec, eos, pad = TokenText(tokenizer), eos_token_ids(tokenizer, model), pad_token_id(tokenizer)
    prompts = [_ids(tokenizer, t) for t in ("Hi", "What is the capital of France?", "The quick brown fox")]

    def request(prompt, **params):
        events: list[Event] = []
        return GenerationRequest("m", [prompt], SamplingParams(**{"max_tokens": 10, "temperature": 0, **params}),
                                 events.append), events

    def text(events):
        assert [e.kind for e in events if e.kind != "delta"] == ["finish"], events
        return "".join(e.text for e in events if e.kind == "delta")

    alone = []
    for p in prompts:
        req, events = request(p)
        decode_batch(model, dec, eos, pad, req.sequences)
        alone.append(text(events))

    good = [request(p) for p in prompts]
    bad_seed, bad_seed_events = request(prompts[0], temperature=1.0, seed=1)
    bad_seed.sequences[0].seed = 2 ** 64                       # what an unchecked seed did to everyone
    bad_stop, bad_stop_events = request(prompts[1], stop=("zz",))
    calls = {"n": 0}
    real = bad_stop.sequences[0]._accept

    def failing(*a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("stop handling exploded")
        return real(*a)
    bad_stop.sequences[0]._accept = failing
    bad_prompt, bad_prompt_events = request([10 ** 6])         # not a token id: the prefill fails
    late_bad, late_bad_events = request([10 ** 6])
    admitted = []

    def admit(free):
        if admitted:
            return []
        admitted.append(True)
        return late_bad.sequences

    seqs = [s for r in (good[0][0], bad_seed, good[1][0], bad_prompt, bad_stop, good[2][0]) for s in r.sequences]
    decode_batch(model, dec, eos, pad, seqs, admit, 8)
    assert [text(events) for _, events in good] == alone
    for events in (bad_seed_events, bad_prompt_events, late_bad_events):
        assert [e.kind for e in events] == ["error"]
    assert [e.kind for e in bad_stop_events if e.kind != "delta"] == ["error"]
    assert "exploded" in str(bad_stop_events[-1].error) and admitted
    assert bad_seed.failed and bad_stop.failed and not good[0][0].failed


# ---- body size and nesting ------------------------------------------------------------------------------------

def test_request_bodies_over_the_limit_get_413(server):
    big = "x" * int(BODY_MB * 1024 * 1024)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/fine_tuning/jobs"):
        err = error_of(post(server, path, {"model": "tiny-base", "prompt": big, "messages": USER}), 413)
        assert err["code"] == "request_too_large" and "limit" in err["message"]
    def chunked():                          # no Content-Length: counted while it is read
        yield b'{"model": "tiny-base", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}]}'
    r = httpx.post(server.url + "/v1/chat/completions", content=chunked(), timeout=60,
                   headers={"content-type": "application/json"})
    assert error_of(r, 413)["code"] == "request_too_large"
    # uploads keep their own (larger) limit; over it: 413 naming the file
    ok = httpx.post(server.url + "/v1/files", files={"file": ("t.jsonl", jsonl(chat_rows(8000)), "application/jsonl")},
                    data={"purpose": "fine-tune"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["bytes"] > BODY_MB * 1024 * 1024, ok.text
    r = httpx.post(server.url + "/v1/files", files={"file": ("t.jsonl", b"x" * (UPLOAD_BYTES + 100_000))},
                   data={"purpose": "fine-tune"}, timeout=60)
    assert error_of(r, 413)["code"] == "file_too_large"
    assert post(server, "/v1/chat/completions", chat_body()).status_code == 200       # the server is fine


def test_deeply_nested_json_is_400(server):
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/fine_tuning/jobs"):
        r = httpx.post(server.url + path, content=deep, headers={"content-type": "application/json"}, timeout=60)
        assert "nested too deeply" in error_of(r, 400)["message"]
    within = "[" * 900 + "]" * 900                                # parses, then meets recursive code
    for field in ("response_format", "tool_choice", "user", "logit_bias", "stop"):
        body = json.dumps(chat_body()).replace('"max_tokens"', f'"{field}": {{"type": {within}}}, "max_tokens"')
        r = httpx.post(server.url + "/v1/chat/completions", content=body, timeout=60,
                       headers={"content-type": "application/json"})
        assert r.status_code in (200, 400), (field, r.status_code, r.text[:200])
    r = httpx.post(server.url + "/v1/files", files={"file": ("t.jsonl", ('{"messages": ' + deep + "}\n").encode())},
                   data={"purpose": "fine-tune"}, timeout=60)
    err = error_of(r, 400)
    assert err["param"] == "file" and "nested" in err["message"]


# ---- tokenisation ---------------------------------------------------------------------------------------------

def test_a_huge_prompt_does_not_stall_a_short_request(server):
    huge = "The movie was wonderful. " * 36_000                     # ~900 kB: under the body limit
    long_result: dict = {}

    def long_client():
        t0 = time.perf_counter()
        long_result["r"] = post(server, "/v1/chat/completions", chat_body(messages=[{"role": "user", "content": huge}]))
        long_result["s"] = time.perf_counter() - t0

    post(server, "/v1/chat/completions", chat_body(max_tokens=2))        # warm
    t = threading.Thread(target=long_client)
    t.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    short = post(server, "/v1/chat/completions", chat_body(max_tokens=2))
    short_s = time.perf_counter() - t0
    t.join(60)
    assert short.status_code == 200 and short_s < 1.5, short_s
    err = error_of(long_result["r"], 400)
    assert err["code"] == "context_length_exceeded" and "characters" in err["message"]
    assert long_result["s"] < 2.0, long_result["s"]           # rejected before tokenising (was seconds)
    r = post(server, "/v1/completions", {"model": "tiny-base", "prompt": huge, "max_tokens": 2})
    assert error_of(r, 400)["code"] == "context_length_exceeded"
    r = post(server, "/v1/completions", {"model": "tiny-base", "prompt": [1] * 100_000, "max_tokens": 2})
    assert error_of(r, 400)["code"] == "context_length_exceeded"


def test_tokenisation_holds_no_lock_shared_with_decoding_or_other_requests(tokenizer):
    started, release = threading.Event(), threading.Event()

    class Blocking:
        def __init__(self, tok):
            self.tok = tok

        def __call__(self, text, **kw):
            if text == "BLOCK":
                started.set()
                release.wait(10)
            return self.tok(text, **kw)

        def __getattr__(self, name):
            return getattr(self.tok, name)

    dec = TokenText(Blocking(tokenizer))
    slow = threading.Thread(target=dec.encode, args=("BLOCK",))
    slow.start()
    try:
        assert started.wait(10)
        done = {}
        helper = threading.Thread(target=lambda: done.update(ids=dec.encode("Hi"), text=dec.decode([42, 75]),
                                                             chat=dec.render_chat(USER)))
        helper.start()
        helper.join(10)
        assert done.get("ids") == tokenizer("Hi")["input_ids"] and slow.is_alive()
        with dec.lock:                           # the engine decoding: encoding still goes on
            other = threading.Thread(target=lambda: done.update(more=dec.encode("Hello")))
            other.start()
            other.join(10)
        assert done.get("more") == tokenizer("Hello")["input_ids"]
    finally:
        release.set()
        slow.join(10)
    assert dec.max_chars(512) == 2 * 512 * max(len(t) for t in tokenizer.get_vocab())


# ---- files in use -------------------------------------------------------------------------------------------

def test_a_file_used_by_an_unfinished_job_cannot_be_deleted(server):
    up = httpx.post(server.url + "/v1/files", files={"file": ("t.jsonl", jsonl(chat_rows(4)), "application/jsonl")},
                    data={"purpose": "fine-tune"}, timeout=60).json()
    job = post(server, "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": up["id"]}).json()
    r = httpx.delete(f"{server.url}/v1/files/{up['id']}", timeout=60)
    err = error_of(r, 409)
    assert err["code"] == "file_in_use" and job["id"] in err["message"] and err["param"] == "file_id"
    assert httpx.get(f"{server.url}/v1/files/{up['id']}/content", timeout=60).status_code == 200
    assert post(server, f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert httpx.delete(f"{server.url}/v1/files/{up['id']}", timeout=60).json()["deleted"] is True
