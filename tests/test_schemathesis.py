"""Property-based API conformance: schemathesis generates requests (valid and invalid) for every
operation of the server's own /openapi.json (inference + files + fine-tuning jobs, one app, worker off)
and checks each response: never a 5xx, status codes / content types / bodies as the schema documents."""
from __future__ import annotations

import collections
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobs_util import chat_rows, jsonl, settings_for
from tunesmith.serve import ServeSettings, create_app
from tunesmith.serve.background import BackgroundServer

KEY = "sk-schemathesis"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 12            # generated cases per operation and generation mode (seeded: the same every run)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    from tunesmith.jobs.app import JobsParts
    tmp = tmp_path_factory.mktemp("schemathesis")
    parts = JobsParts(settings_for(f"sqlite:///{tmp / 'jobs.db'}", tmp, tiny_model_dir,
                                   max_upload_bytes=256 * 1024))            # no worker: nothing trains
    serve = ServeSettings(model=str(tiny_model_dir), model_id="tiny", api_keys=[KEY], batch_wait_ms=0,
                          default_max_tokens=4, max_body_mb=1.0)
    with BackgroundServer(create_app(serve, sources=parts.sources, routers=parts.routers)) as srv:
        yield srv


def _real_ids(server) -> dict:
    """A fine-tune file and a (queued, never trained) job, so generated requests also reach real objects."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as h:
        f = h.post("/v1/files", files={"file": ("train.jsonl", jsonl(chat_rows(12)), "application/jsonl")},
                   data={"purpose": "fine-tune"})
        assert f.status_code == 200, f.text
        job = h.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": f.json()["id"]})
        assert job.status_code == 200, job.text
    return {"file_id": f.json()["id"], "job_id": job.json()["id"], "model_id": "tiny"}


def _aim(ids: dict):
    """Point a generated case at the real objects: path ids, and the body's model / training file."""
    def aim(case):
        if isinstance(case.body, dict):
            for key, value in (("model", ids["model_id"]), ("training_file", ids["file_id"])):
                if key in case.body:
                    case.body[key] = value
        return case
    return aim


def _run(operation, strategy, failures: dict, counts: collections.Counter) -> None:
    @given(case=strategy)
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def one(case):
        response = case.call(headers=AUTH, timeout=60)
        counts["cases"] += 1
        counts[f"{response.status_code // 100}xx"] += 1
        try:    # every default check but "schema-valid data must be accepted": a valid-looking request
            # naming an unknown model, cursor or file, or pausing a cancelled job, is rightly a 400
            case.validate_response(response, headers=AUTH, excluded_checks=[positive_data_acceptance])
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (operation.label, type(failure).__name__, failure.title)
                failures.setdefault(key, f"{response.status_code} {response.text[:300]}\n    "
                                         + case.as_curl_command(headers=AUTH))

    try:
        one()
    except Unsatisfiable:           # an operation without parameters or body has no invalid request
        pass


def test_generated_requests_get_documented_non_5xx_responses(server):
    ids = _real_ids(server)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures, counts = {}, collections.Counter()
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        known = {name: ids[name] for name in ("file_id", "job_id", "model_id")
                 if f"{{{name}}}" in operation.path}
        strategies = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                      operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
                      operation.as_strategy(path_parameters=known or None).map(_aim(ids))]
        op_started, before = time.monotonic(), counts["cases"]
        for strategy in strategies:
            _run(operation, strategy, failures, counts)
        print(f"{operation.label}: {counts['cases'] - before} cases, {time.monotonic() - op_started:.1f}s")
    took = time.monotonic() - started
    print(f"\n{counts['cases']} cases in {took:.1f}s: {dict(counts)}")
    for (label, kind, title), example in sorted(failures.items()):
        print(f"{label}: {kind}: {title}\n    {example}")
    server_errors = [k for k in failures if k[1] == "ServerError"]
    assert not server_errors, server_errors
    assert not failures, sorted(failures)
    assert counts["cases"] >= 300 and counts["2xx"] >= 50, counts   # the run reached real objects too
