"""The OpenAI-compatible server end to end: a real uvicorn server driven by the official openai client."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import openai
import pytest

from serve_fixtures import FakeSource, build_runs, metric_value, reference_generate
from tunesmith.serve import ServedModel, ServeSettings, create_app
from tunesmith.serve.background import BackgroundServer

FT_ID = "ft:tiny-llama:tunesmith:mysuffix:abc123"
SLASH_ID = "acme/sentiment:v2"
USER = [{"role": "user", "content": "The movie was wonderful and the actors were great."}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    return build_runs(tmp_path_factory.mktemp("serve"), tiny_model_dir)


@pytest.fixture(scope="module")
def source(runs):
    return FakeSource([ServedModel(FT_ID, runs["alpha"], 1_700_000_000, "user-1"),
                       ServedModel(SLASH_ID, runs["beta"], 1_700_000_001, "user-1")])


@pytest.fixture(scope="module")
def server(runs, source, tiny_model_dir):
    settings = ServeSettings(model=str(tiny_model_dir), model_id="tiny-base", runs=[runs["root"]], api_keys=[],
                             batch_wait_ms=60, max_batch_size=8, default_max_tokens=12)
    with BackgroundServer(create_app(settings, sources=[source])) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, model, **kw):
    kw.setdefault("messages", USER)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, **kw)


def sse_events(server, path: str, body: dict) -> tuple[httpx.Response, str]:
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", server.url + path, json=body) as r:
            raw = "".join(r.iter_text())
    return r, raw


# ---- models ---------------------------------------------------------------------------------------------------

def test_lists_base_runs_and_source_models(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny-base"
    assert {"alpha-001", "beta-001", "cls-001", "bitfit-001", FT_ID, SLASH_ID} <= set(ids)
    got = client.models.retrieve(FT_ID)
    assert (got.id, got.object, got.owned_by, got.created) == (FT_ID, "model", "user-1", 1_700_000_000)
    assert client.models.retrieve(SLASH_ID).id == SLASH_ID          # client percent-encodes the '/'
    raw = httpx.get(f"{server.url}/v1/models/{SLASH_ID}").json()    # and a raw '/' works too
    assert raw == {"id": SLASH_ID, "object": "model", "created": 1_700_000_001, "owned_by": "user-1"}
    listing = httpx.get(server.url + "/v1/models").json()
    assert listing["object"] == "list" and all(set(m) == {"id", "object", "created", "owned_by"}
                                               for m in listing["data"])


def test_a_model_appearing_later_is_servable_at_once(client, source, runs):
    late = "ft:tiny-llama:tunesmith:late:zz9"
    with pytest.raises(openai.NotFoundError):
        chat(client, late, max_tokens=2)
    source.entries.append(ServedModel(late, runs["alpha"], 1_700_000_100, "user-2"))
    try:
        assert late in [m.id for m in client.models.list().data]
        assert chat(client, late, max_tokens=2).model == late
    finally:
        source.entries.pop()


# ---- chat ---------------------------------------------------------------------------------------------------------

def test_chat_greedy_matches_tunesmith_generate(client, runs):
    for model_id, run in (("alpha-001", runs["alpha"]), ("beta-001", runs["beta"]), (FT_ID, runs["alpha"])):
        r = chat(client, model_id, max_tokens=10)
        assert r.object == "chat.completion" and r.model == model_id and r.id.startswith("chatcmpl-")
        assert r.choices[0].message.role == "assistant"
        expected = reference_generate(run, USER, 10)
        assert r.choices[0].message.content.strip() == expected
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_merged_non_lora_run_matches_its_merged_model(client, runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.generation import generate
    merged = runs["bitfit"] / "export" / "merged"
    expected = generate(AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged),
                        [USER], 10)[0]
    assert chat(client, "bitfit-001", max_tokens=10).choices[0].message.content.strip() == expected


def test_adapters_switch_per_request(client):
    outs = {m: chat(client, m, max_tokens=10).choices[0].message.content for m in ("tiny-base", "alpha-001", "beta-001")}
    assert outs["beta-001"] != outs["alpha-001"] and outs["beta-001"] != outs["tiny-base"]
    again = {m: chat(client, m, max_tokens=10).choices[0].message.content for m in ("beta-001", "tiny-base", "alpha-001")}
    assert again == outs


def test_streaming_chat_with_the_client(client):
    full = chat(client, "alpha-001", max_tokens=10).choices[0].message.content
    stream = chat(client, "alpha-001", max_tokens=10, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_streaming_chat_sse_framing(server):
    body = {"model": "alpha-001", "messages": USER, "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    r, raw = sse_events(server, "/v1/chat/completions", body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert raw.endswith("data: [DONE]\n\n")
    frames = raw.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames)
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    first, last_choice, usage = chunks[0], chunks[-2], chunks[-1]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None}
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert last_choice["choices"][0]["delta"] == {} and last_choice["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 6
    # without include_usage there is no usage key and no usage chunk
    _, raw = sse_events(server, "/v1/chat/completions", {**body, "stream_options": None})
    chunks = [json.loads(f[6:]) for f in raw.split("\n\n")[:-2]]
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_max_tokens_and_max_completion_tokens(client):
    assert chat(client, "alpha-001", max_tokens=3).usage.completion_tokens == 3
    r = chat(client, "alpha-001", max_completion_tokens=4)
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
    assert chat(client, "alpha-001", max_tokens=9, max_completion_tokens=2).usage.completion_tokens == 2
    assert chat(client, "alpha-001").usage.completion_tokens == 12          # the server's default


def test_stop_strings_cut_before_the_stop(client):
    full = chat(client, "beta-001", max_tokens=12).choices[0].message.content
    stop = full[4:6]
    cut = full[:full.find(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(chat(client, "beta-001", max_tokens=12, stop=[stop, "never-seen"], stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            r = chat(client, "beta-001", max_tokens=12, stop=stop)
            text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        assert text == cut and reason == "stop"


def test_seeded_sampling_is_deterministic(client):
    def sample(seed):
        return chat(client, "beta-001", max_tokens=12, temperature=1.3, top_p=0.95, seed=seed).choices[0].message.content
    a, b = sample(11), sample(11)
    assert a == b
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_n_choices(client):
    r = chat(client, "beta-001", max_tokens=6, n=3, temperature=1.0, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == sum(6 for _ in r.choices)
    texts, finished = {}, set()
    for chunk in chat(client, "beta-001", max_tokens=6, n=3, temperature=1.0, seed=5, stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1, 2} and [texts[i] for i in range(3)] == [c.message.content for c in r.choices]


def test_chat_logprobs_shape(client):
    r = chat(client, "alpha-001", max_tokens=5, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    text = ""
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token                  # greedy: the best token was taken
        assert abs(item.top_logprobs[0].logprob - item.logprob) < 1e-5
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob >= item.top_logprobs[2].logprob
        assert isinstance(item.bytes, list)
        text += bytes(item.bytes).decode("utf-8", errors="replace") if item.bytes else ""
    assert chat(client, "alpha-001", max_tokens=2).choices[0].logprobs is None
    streamed = [c for c in chat(client, "alpha-001", max_tokens=5, logprobs=True, top_logprobs=1, stream=True)
                if c.choices and c.choices[0].logprobs]
    assert sum(len(c.choices[0].logprobs.content) for c in streamed) == 5


# ---- completions -------------------------------------------------------------------------------------------

def test_completions(client, server):
    r = client.completions.create(model="alpha-001", prompt="The movie was", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 5
    text = r.choices[0].text
    streamed = list(client.completions.create(model="alpha-001", prompt="The movie was", max_tokens=5,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text
    assert streamed[-1].choices[0].finish_reason == "length"
    echo = client.completions.create(model="alpha-001", prompt="The movie was", max_tokens=5, temperature=0, echo=True)
    assert echo.choices[0].text == "The movie was" + text
    multi = client.completions.create(model="alpha-001", prompt=["The movie was", "I did not"], max_tokens=3,
                                      temperature=0, n=2)
    assert [c.index for c in multi.choices] == [0, 1, 2, 3]
    assert multi.choices[0].text == multi.choices[1].text == text[:len(multi.choices[0].text)]
    lp = client.completions.create(model="alpha-001", prompt="The movie was", max_tokens=4, temperature=0, logprobs=2)
    lps = lp.choices[0].logprobs
    assert len(lps.tokens) == len(lps.token_logprobs) == len(lps.top_logprobs) == len(lps.text_offset) == 4
    assert all(len(t) <= 2 for t in lps.top_logprobs) and lps.text_offset[0] == 0
    assert lps.text_offset == sorted(lps.text_offset)
    _, raw = sse_events(server, "/v1/completions", {"model": "alpha-001", "prompt": "The movie was", "max_tokens": 3,
                                                    "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(f[6:]) for f in raw.split("\n\n")[:-2]]
    assert raw.endswith("data: [DONE]\n\n") and all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


# ---- batching ------------------------------------------------------------------------------------------------

def test_concurrent_requests_are_batched(client, server):
    prompts = [[{"role": "user", "content": t}] for t in
               ("Hi", "The quick brown fox jumps over the lazy dog", "What is the capital of France?",
                "Summarise the following text in one sentence. The food was cold and bland.")]
    alone = [chat(client, "alpha-001", messages=p, max_tokens=8).choices[0].message.content for p in prompts]
    before = metric_value(httpx.get(server.url + "/metrics").text, "tunesmith_batch_size_count")
    before_single = metric_value(httpx.get(server.url + "/metrics").text, "tunesmith_batch_size_bucket", {"le": "1.0"})
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def worker(i):
        barrier.wait()
        results[i] = chat(client, "alpha-001", messages=prompts[i], max_tokens=8).choices[0].message.content

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert results == alone                      # left padding and masks keep each answer intact
    text = httpx.get(server.url + "/metrics").text
    batches = metric_value(text, "tunesmith_batch_size_count") - before
    singles = metric_value(text, "tunesmith_batch_size_bucket", {"le": "1.0"}) - before_single
    assert batches < 4 and singles < batches + 0.5 and batches - singles >= 1    # at least one batch of >1


def test_requests_for_different_adapters_of_one_base_share_a_batch(client, server):
    """The base and its LoRA adapters decode in one batch (peft's mixed-adapter batches: each row names its
    adapter); every answer is the one its model gives alone."""
    models = ["alpha-001", "beta-001", "tiny-base", FT_ID]
    prompt = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog"}]
    alone = [chat(client, m, messages=prompt, max_tokens=8).choices[0].message.content for m in models]
    assert alone[0] != alone[1] and alone[0] == alone[3]        # beta's adapter answers differently
    before = metric_value(httpx.get(server.url + "/metrics").text, "tunesmith_mixed_adapter_batches_total")
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def worker(i):
        barrier.wait()
        results[i] = chat(client, models[i], messages=prompt, max_tokens=8).choices[0].message.content

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert results == alone
    after = metric_value(httpx.get(server.url + "/metrics").text, "tunesmith_mixed_adapter_batches_total")
    assert after > before                                        # at least one forward pass mixed models


def test_guided_choice_answers_only_a_label_alone_streamed_and_batched(client, server):
    labels = ["positive", "negative", "pos", "mixed feelings"]      # "pos" is a prefix of "positive"
    prompts = [[{"role": "user", "content": t}] for t in ("Hi", "The food was cold and bland.", "Great film!")]
    free = [chat(client, "beta-001", messages=p, max_tokens=8).choices[0].message.content for p in prompts]
    alone = []
    for p in prompts:
        r = chat(client, "beta-001", messages=p, extra_body={"guided_choice": labels}, logprobs=True)
        assert r.choices[0].message.content in labels and r.choices[0].finish_reason == "stop"
        assert r.choices[0].logprobs.content          # the chosen tokens' logprobs, as for free decoding
        streamed = chat(client, "beta-001", messages=p, extra_body={"guided_choice": labels}, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == r.choices[0].message.content
        alone.append(r.choices[0].message.content)
    # guided and free requests in the same batches: each keeps its own answer
    results: list = [None] * 6
    barrier = threading.Barrier(6)

    def worker(i):
        barrier.wait()
        kw = {"extra_body": {"guided_choice": labels}} if i % 2 else {"max_tokens": 8}
        results[i] = chat(client, "beta-001", messages=prompts[i // 2], **kw).choices[0].message.content

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert results[0::2] == free and results[1::2] == alone
    bad = httpx.post(server.url + "/v1/chat/completions",
                     json={"model": "beta-001", "messages": prompts[0], "guided_choice": ["yes", "yes"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "guided_choice"


def test_a_classification_head_run_answers_with_its_labels(client, server, runs):
    """A label-head run is served: the reply is the head's most probable label (as ``tunesmith``'s own
    prediction), its first token's logprob is that label's log-probability and the top alternatives are
    labels; streamed, sampled (n=3, seeded) and ``guided_choice``-narrowed replies are labels too."""
    import math

    from tunesmith import objectives
    from tunesmith.rundir import Run
    from tunesmith.tuned import load_tuned
    run = Run(runs["cls"])
    obj = objectives.from_recipe(run.recipe)
    obj.load_meta(run.model_dir)
    model, tok = load_tuned(run, "cpu", objective=obj)
    prompts = [[{"role": "user", "content": t}] for t in ("Hi", "The food was cold and bland.", "Great film!")]
    want = obj.predict(model, tok, prompts)
    for p, w in zip(prompts, want):
        r = chat(client, "cls-001", messages=p, logprobs=True, top_logprobs=2)
        c = r.choices[0]
        assert c.message.content == w["label"] and c.finish_reason == "stop"
        first = c.logprobs.content[0]
        assert math.exp(first.logprob) == pytest.approx(w["probabilities"][w["label"]], abs=1e-4)
        assert [t.token for t in first.top_logprobs][0] == w["label"]
        assert {t.token for t in first.top_logprobs} <= set(obj.labels)
        streamed = chat(client, "cls-001", messages=p, stream=True)
        assert "".join(x.choices[0].delta.content or "" for x in streamed if x.choices) == w["label"]
    sampled = chat(client, "cls-001", messages=prompts[0], temperature=1.5, n=3, seed=3)
    assert len(sampled.choices) == 3 and {x.message.content for x in sampled.choices} <= set(obj.labels)
    assert [x.message.content for x in sampled.choices] == \
        [x.message.content for x in chat(client, "cls-001", messages=prompts[0], temperature=1.5, n=3, seed=3).choices]
    other = next(lb for lb in obj.labels if lb != want[0]["label"])
    narrowed = chat(client, "cls-001", messages=prompts[0], extra_body={"guided_choice": [other, "maybe"]})
    assert narrowed.choices[0].message.content == other
    bad = httpx.post(server.url + "/v1/chat/completions",
                     json={"model": "cls-001", "messages": prompts[0], "guided_choice": ["maybe", "perhaps"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "guided_choice"


# ---- errors -------------------------------------------------------------------------------------------------

def _envelope(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_error_envelopes(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "no-such-model")
    assert e.value.code == "model_not_found"
    r = httpx.get(server.url + "/v1/models/no/such:model")
    assert r.status_code == 404 and _envelope(r)["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        chat(client, "alpha-001", temperature=5)
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "alpha-001", "temperature": 5, "messages": USER})
    err = _envelope(r)
    assert r.status_code == 400 and err["param"] == "temperature" and err["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "alpha-001"})
    assert r.status_code == 400 and _envelope(r)["param"] == "messages"
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in _envelope(r)["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "alpha-001", "messages": USER, "stop": ["a"] * 5})
    assert r.status_code == 400 and _envelope(r)["param"] == "stop"
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and _envelope(r)["code"] == "not_found"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and _envelope(r)["code"] == "method_not_allowed"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "alpha-001", messages=[{"role": "user", "content": "word " * 600}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        chat(client, "alpha-001", max_tokens=100_000)
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": "alpha-001", "messages": USER, "max_tokens": 2, "unknown_field": {"x": 1}})
    assert r.status_code == 200                 # unknown fields (extra_body) are ignored


def test_health_and_metrics(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["base_model"] == "tiny-base"
    assert "alpha-001" in h["loaded"]
    text = httpx.get(server.url + "/metrics").text
    for name in ("tunesmith_request_latency_seconds_bucket", "tunesmith_time_to_first_token_seconds_count",
                 "tunesmith_generated_tokens_total", "tunesmith_request_tokens_per_second_count",
                 "tunesmith_errors_total", "tunesmith_queue_depth", "tunesmith_loaded_adapters",
                 "tunesmith_batch_size_bucket", "tunesmith_batch_tokens_per_second"):
        assert name in text, name
    assert metric_value(text, "tunesmith_generated_tokens_total", {"model": "alpha-001"}) > 0
    assert metric_value(text, "tunesmith_loaded_adapters") >= 3
    assert metric_value(text, "tunesmith_queue_depth") == 0


# ---- a second server: authentication and a tiny adapter budget -------------------------------------------------

def test_auth_and_lru_eviction(runs, tiny_model_dir, monkeypatch):
    """Keys from TUNESMITH_API_KEYS guard /v1 (and mounted routers); a budget of one adapter evicts LRU."""
    from contextlib import contextmanager

    from fastapi import APIRouter
    monkeypatch.setenv("TUNESMITH_API_KEYS", "key-one, key-two")
    settings = ServeSettings(model=str(tiny_model_dir), runs=[runs["root"]], adapter_budget_mb=0.04,
                             batch_wait_ms=0)
    assert settings.api_keys == ["key-one", "key-two"]
    extra = APIRouter()
    extra.get("/v1/extra/ping")(lambda: {"pong": True})
    lived = []

    @contextmanager
    def worker():
        lived.append("started")
        yield
        lived.append("stopped")

    with BackgroundServer(create_app(settings, routers=[extra], lifespans=[worker])) as srv:
        assert lived == ["started"]
        assert httpx.get(srv.url + "/v1/extra/ping").status_code == 401
        assert httpx.get(srv.url + "/v1/extra/ping", headers={"Authorization": "Bearer key-one"}).json() == {"pong": True}
        r = httpx.get(srv.url + "/v1/models")
        assert r.status_code == 401 and _envelope(r)["code"] == "invalid_api_key"
        assert r.headers.get("www-authenticate") == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(srv.url + "/health").status_code == 200
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="key-two", max_retries=0, timeout=60)
        outs = {}
        for model_id in ("alpha-001", "beta-001", "alpha-001", "beta-001"):
            content = chat(c, model_id, max_tokens=8).choices[0].message.content
            assert outs.setdefault(model_id, content) == content      # reloading after eviction is exact
            text = httpx.get(srv.url + "/metrics").text
            assert metric_value(text, "tunesmith_loaded_adapters") == 1
        assert metric_value(text, "tunesmith_adapter_evictions_total") == 3
        assert outs["alpha-001"] == reference_generate(runs["alpha"], USER, 8)
    assert lived == ["started", "stopped"]


REAL_RUN = Path("/tmp/fresh4/runs/sentiment-001")


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_RUN / "model").is_dir(), reason="the real sentiment run is absent")
def test_real_run_matches_tunesmith_generate():
    """SmolLM2 + the sentiment LoRA: the server's greedy replies equal tunesmith's own generate."""
    test = [json.loads(line) for line in (REAL_RUN / "data" / "test.jsonl").read_text().splitlines()[:4]]
    prompts = [[m for m in ex["messages"] if m["role"] != "assistant"] for ex in test]
    prompts.append([{"role": "user", "content": "What is the capital of France?"}])
    with BackgroundServer(create_app(ServeSettings(runs=[REAL_RUN], batch_wait_ms=0))) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=600)
        got = [c.chat.completions.create(model="sentiment-001", messages=p, max_tokens=16, temperature=0)
               for p in prompts]
    assert all(r.choices[0].finish_reason == "stop" for r in got)     # the end-of-turn token stops replies
    assert [r.choices[0].message.content for r in got] == [reference_generate(REAL_RUN, p, 16) for p in prompts]
