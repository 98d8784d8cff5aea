"""Bad-input corpus, part 3: hostile or malformed requests to the OpenAI-compatible server (TestClient, tiny model).

Every case: the expected 4xx status, the OpenAI error envelope ``{"error": {message, type, param, code}}``,
never a 5xx; the server still answers a good request afterwards.
"""
from __future__ import annotations

import json

import pytest

from corpus_harness import TALLY

USER = [{"role": "user", "content": "The movie was wonderful."}]
BODY_MB = 0.25


def chat(**kw) -> dict:
    return {"model": "tiny-base", "messages": USER, "max_tokens": 2, **kw}


def raw(text: str | bytes):
    return ("raw", text)


DEEP = "[" * 100_000 + "]" * 100_000
# (id, method, path, body (a dict is sent as JSON; ("raw", x) as is; ("files", ...) as an upload), status, param)
REQUESTS = [
    ("invalid-json", "POST", "/v1/chat/completions", raw("{not json"), 400, None),
    ("empty-body", "POST", "/v1/chat/completions", raw(""), 400, None),
    ("body-is-a-list", "POST", "/v1/chat/completions", [1, 2], 400, None),
    ("body-is-a-string", "POST", "/v1/chat/completions", raw('"hello"'), 400, None),
    ("missing-messages", "POST", "/v1/chat/completions", {"model": "tiny-base"}, 400, "messages"),
    ("messages-not-a-list", "POST", "/v1/chat/completions", chat(messages="hi"), 400, "messages"),
    ("messages-empty", "POST", "/v1/chat/completions", chat(messages=[]), 400, "messages"),
    ("message-without-role", "POST", "/v1/chat/completions", chat(messages=[{"content": "x"}]), 400, "messages"),
    ("message-bad-role", "POST", "/v1/chat/completions", chat(messages=[{"role": "god", "content": "x"}]), 400,
     "messages"),
    ("content-a-number", "POST", "/v1/chat/completions", chat(messages=[{"role": "user", "content": 5}]), 400,
     "messages"),
    ("missing-model", "POST", "/v1/chat/completions", {"messages": USER}, 400, "model"),
    ("unknown-model", "POST", "/v1/chat/completions", chat(model="gpt-17"), 404, "model"),
    ("model-a-number", "POST", "/v1/chat/completions", chat(model=7), 400, "model"),
    ("max-tokens-a-string", "POST", "/v1/chat/completions", chat(max_tokens="ten"), 400, "max_tokens"),
    ("max-tokens-negative", "POST", "/v1/chat/completions", chat(max_tokens=-1), 400, "max_tokens"),
    ("temperature-a-string", "POST", "/v1/chat/completions", chat(temperature="hot"), 400, "temperature"),
    ("temperature-too-high", "POST", "/v1/chat/completions", chat(temperature=5), 400, "temperature"),
    ("top-p-too-high", "POST", "/v1/chat/completions", chat(top_p=2), 400, "top_p"),
    ("n-zero", "POST", "/v1/chat/completions", chat(n=0), 400, "n"),
    ("n-too-large", "POST", "/v1/chat/completions", chat(n=1000), 400, "n"),
    ("seed-2-64", "POST", "/v1/chat/completions", chat(seed=2 ** 64, temperature=1), 400, "seed"),
    ("seed-a-string", "POST", "/v1/chat/completions", chat(seed="lucky"), 400, "seed"),
    ("seed-a-float", "POST", "/v1/chat/completions", chat(seed=1.5), 400, "seed"),
    ("logit-bias-not-a-map", "POST", "/v1/chat/completions", chat(logit_bias=[1, 2]), 400, "logit_bias"),
    ("logit-bias-out-of-vocab", "POST", "/v1/chat/completions", chat(logit_bias={"999999": 5}), 400, "logit_bias"),
    ("logit-bias-too-strong", "POST", "/v1/chat/completions", chat(logit_bias={"5": 500}), 400, "logit_bias"),
    ("stop-a-number", "POST", "/v1/chat/completions", chat(stop=5), 400, "stop"),
    ("stream-a-string", "POST", "/v1/chat/completions", chat(stream="yes please"), 400, "stream"),
    ("too-long-prompt", "POST", "/v1/chat/completions",
     chat(messages=[{"role": "user", "content": "word " * 40_000}]), 400, None),
    ("nested-json", "POST", "/v1/chat/completions", raw(DEEP), 400, None),
    ("body-too-large", "POST", "/v1/chat/completions", chat(messages=[{"role": "user", "content": "x" * 400_000}]),
     413, None),
    ("completions-missing-prompt", "POST", "/v1/completions", {"model": "tiny-base"}, 400, "prompt"),
    ("completions-prompt-a-dict", "POST", "/v1/completions", {"model": "tiny-base", "prompt": {"a": 1}}, 400,
     "prompt"),
    ("completions-token-out-of-vocab", "POST", "/v1/completions", {"model": "tiny-base", "prompt": [10 ** 7]}, 400,
     "prompt"),
    ("completions-unknown-model", "POST", "/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "model"),
    ("completions-nested", "POST", "/v1/completions", raw(DEEP), 400, None),
    ("completions-too-large", "POST", "/v1/completions", {"model": "tiny-base", "prompt": "y" * 400_000}, 413, None),
    ("get-unknown-model", "GET", "/v1/models/no-such-model", None, 404, None),
    ("files-no-file", "POST", "/v1/files", ("files", None, {"purpose": "fine-tune"}), 400, None),
    ("files-bad-purpose", "POST", "/v1/files", ("files", ("t.jsonl", b'{"a": 1}\n'), {"purpose": "nonsense"}), 400,
     "purpose"),
    ("files-not-jsonl", "POST", "/v1/files", ("files", ("t.jsonl", b"not json at all\n"), {"purpose": "fine-tune"}),
     400, "file"),
    ("files-empty", "POST", "/v1/files", ("files", ("t.jsonl", b""), {"purpose": "fine-tune"}), 400, "file"),
    ("files-not-utf8", "POST", "/v1/files", ("files", ("t.jsonl", b'{"messages": "caf\xe9"}\n'),
                                             {"purpose": "fine-tune"}), 400, "file"),
    ("files-nested", "POST", "/v1/files", ("files", ("t.jsonl", ('{"messages": ' + DEEP + "}\n").encode()),
                                           {"purpose": "fine-tune"}), 400, "file"),
    ("files-wrong-schema", "POST", "/v1/files", ("files", ("t.jsonl", b'{"text": "no messages"}\n'),
                                                 {"purpose": "fine-tune"}), 400, "file"),
    ("files-get-missing", "GET", "/v1/files/file-nope", None, 404, None),
    ("files-delete-missing", "DELETE", "/v1/files/file-nope", None, 404, None),
    ("files-content-missing", "GET", "/v1/files/file-nope/content", None, 404, None),
    ("jobs-unknown-file", "POST", "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": "file-nope"}, 400,
     "training_file"),
    ("jobs-missing-file", "POST", "/v1/fine_tuning/jobs", {"model": "tiny"}, 400, "training_file"),
    ("jobs-get-missing", "GET", "/v1/fine_tuning/jobs/ftjob-nope", None, 404, None),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    from fastapi.testclient import TestClient

    from jobs_util import settings_for
    from tunesmith.jobs.app import JobsParts
    from tunesmith.serve import ServeSettings
    from tunesmith.serve.app import create_app
    tmp = tmp_path_factory.mktemp("corpus-server")
    parts = JobsParts(settings_for(f"sqlite:///{tmp / 'jobs.db'}", tmp, tiny_model_dir))
    settings = ServeSettings(model=str(tiny_model_dir), model_id="tiny-base", api_keys=[], batch_wait_ms=5,
                             max_batch_size=8, default_max_tokens=4, max_body_mb=BODY_MB)
    with TestClient(create_app(settings, sources=parts.sources, routers=parts.routers),
                    raise_server_exceptions=False) as c:
        yield c


def send(client, method: str, path: str, body):
    if isinstance(body, tuple) and body[0] == "raw":
        return client.request(method, path, content=body[1], headers={"content-type": "application/json"})
    if isinstance(body, tuple) and body[0] == "files":
        return client.request(method, path, files={"file": body[1]} if body[1] else None, data=body[2])
    return client.request(method, path, json=body) if body is not None else client.request(method, path)


@pytest.mark.parametrize("method, path, body, status, param", [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS])
def test_bad_request(client, method, path, body, status, param):
    TALLY["server"] += 1
    r = send(client, method, path, body)
    if r.status_code >= 500:
        TALLY["server_5xx"] += 1
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and "Traceback" not in err["message"]
    assert "\n" not in err["message"].strip(), err["message"]
    if param is not None:
        assert err["param"] == param or (err["param"] or "").startswith(param), err


def test_the_server_still_answers(client):
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant", r.text
    assert json.loads(r.text)["usage"]["completion_tokens"] >= 1
