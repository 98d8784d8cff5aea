"""Files and fine-tuning jobs API over SQLite and PostgreSQL: shapes, validation, pagination, state changes."""
from __future__ import annotations

import json

import pytest

from jobs_util import chat_rows, db_url_for, dpo_rows, jsonl, prompt_rows, router_client, settings_for, upload

JOB_KEYS = {"object", "id", "created_at", "error", "fine_tuned_model", "finished_at", "hyperparameters", "model",
            "organization_id", "result_files", "seed", "status", "trained_tokens", "training_file",
            "validation_file", "estimated_finish", "integrations", "metadata", "method"}
FILE_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "status_details", "expires_at"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    return db_url_for(request.param, tmp_path)


@pytest.fixture
def ctx(db_url, tmp_path, tiny_model_dir):
    from tunesmith.jobs.settings import JobsContext
    c = JobsContext(settings_for(db_url, tmp_path, tiny_model_dir, max_upload_bytes=20_000))
    yield c
    c.db.dispose()


@pytest.fixture
def client(ctx):
    with router_client(ctx) as c:
        yield c


def assert_error(resp, status: int, param=None, text: str | None = None, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    if text is not None:
        assert text in err["message"], err["message"]
    return err


# ---- files ---------------------------------------------------------------------------------------

def test_upload_get_content_delete(client, ctx):
    body = jsonl(chat_rows(12))
    r = upload(client, body)
    assert r.status_code == 200, r.text
    f = r.json()
    assert set(f) == FILE_KEYS
    assert f["id"].startswith("file-") and f["object"] == "file" and f["bytes"] == len(body)
    assert f["purpose"] == "fine-tune" and f["status"] == "processed" and f["filename"] == "train.jsonl"
    assert isinstance(f["created_at"], int)
    assert client.get(f"/v1/files/{f['id']}").json() == f
    content = client.get(f"/v1/files/{f['id']}/content")
    assert content.status_code == 200 and content.content == body
    stored = list(ctx.files_dir.iterdir())
    assert [p.name for p in stored] == [f"{f['id']}.jsonl"]       # no temporary files left behind
    assert client.delete(f"/v1/files/{f['id']}").json() == {"id": f["id"], "object": "file", "deleted": True}
    assert not list(ctx.files_dir.iterdir())
    assert_error(client.get(f"/v1/files/{f['id']}"), 404, text=f"No such File object: {f['id']}")
    assert_error(client.delete(f"/v1/files/{f['id']}"), 404)
    assert_error(client.get(f"/v1/files/{f['id']}/content"), 404)


def test_upload_other_purposes_and_expiry(client):
    r = client.post("/v1/files", files={"file": ("notes.txt", b"not json at all", "text/plain")},
                    data={"purpose": "user_data", "expires_after[anchor]": "created_at",
                          "expires_after[seconds]": "3600"})
    assert r.status_code == 200, r.text
    assert r.json()["expires_at"] == r.json()["created_at"] + 3600
    assert_error(client.post("/v1/files", files={"file": ("a.txt", b"x", "text/plain")},
                             data={"purpose": "user_data", "expires_after[anchor]": "created_at",
                                   "expires_after[seconds]": "60"}), 400, param="expires_after.seconds")


def test_upload_validation_names_lines(client, ctx):
    good = json.dumps(chat_rows(1)[0])
    body = "\n".join([good, "{not json", "[1, 2]", good,
                      json.dumps({"messages": [{"role": "robot", "content": "x"}]})]).encode()
    err = assert_error(upload(client, body), 400, param="file", code="invalid_file_format")
    assert "line 2: invalid JSON" in err["message"]
    assert "line 3:" in err["message"] and "expected a JSON object" in err["message"]
    assert "line 5: field 'messages[0].role': unknown role 'robot'" in err["message"]
    assert "line 1:" not in err["message"] and "line 4:" not in err["message"]
    # a text corpus is valid tunesmith data but not a fine-tuning job's format
    err = assert_error(upload(client, [{"text": "plain"}]), 400, code="invalid_file_format")
    assert "'text' record" in err["message"]
    assert_error(upload(client, b""), 400, text="has no examples")
    # mixed formats: the first line decides, later lines must match it
    mixed = jsonl(chat_rows(1) + prompt_rows(1))
    assert "line 2:" in assert_error(upload(client, mixed), 400)["message"]
    assert not list(ctx.files_dir.iterdir())          # nothing stored for rejected uploads


def test_upload_accepts_each_training_format(client):
    for rows in (chat_rows(3), prompt_rows(3), dpo_rows(3)):
        assert upload(client, rows).status_code == 200
    alt = [{"input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_completion": [{"role": "assistant", "content": "good"}],
            "non_preferred_completion": [{"role": "assistant", "content": "bad"}]}]
    assert upload(client, alt).status_code == 200


def test_upload_size_limit_and_bad_requests(client, ctx):
    big = jsonl(chat_rows(400))
    assert len(big) > ctx.settings.max_upload_bytes
    err = assert_error(upload(client, big), 413, param="file", code="file_too_large")
    assert "20000" in err["message"]
    huge = jsonl(chat_rows(1500))       # declared length far over the limit: refused before the body is read
    assert len(huge) > ctx.settings.max_upload_bytes + 64 * 1024
    assert_error(upload(client, huge), 413, code="file_too_large")
    assert_error(client.post("/v1/files", data={"purpose": "fine-tune"}), 400, param="file")
    assert_error(upload(client, chat_rows(1), purpose="homework"), 400, param="purpose")
    assert_error(client.post("/v1/files", json={"purpose": "fine-tune"}), 400, param="file")
    assert not list(ctx.files_dir.iterdir())


def test_list_files_pagination(client):
    ids = [upload(client, chat_rows(2, offset=i)).json()["id"] for i in range(4)]
    other = upload(client, b"{}", purpose="batch", filename="b.jsonl").json()["id"]
    everything = client.get("/v1/files").json()
    assert [f["id"] for f in everything["data"]] == [other, *ids[::-1]]       # newest first
    first = client.get("/v1/files", params={"purpose": "fine-tune", "limit": 3}).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [f["id"] for f in first["data"]] == ids[::-1][:3]
    assert (first["first_id"], first["last_id"]) == (ids[3], ids[1])
    rest = client.get("/v1/files", params={"purpose": "fine-tune", "limit": 3, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
    asc = client.get("/v1/files", params={"purpose": "fine-tune", "order": "asc", "limit": 2}).json()
    assert [f["id"] for f in asc["data"]] == ids[:2] and asc["has_more"] is True
    empty = client.get("/v1/files", params={"purpose": "evals"}).json()
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    assert_error(client.get("/v1/files", params={"limit": 0}), 400, param="limit")
    assert_error(client.get("/v1/files", params={"order": "sideways"}), 400, param="order")
    assert_error(client.get("/v1/files", params={"after": "file-nope"}), 400, param="after")


# ---- jobs ----------------------------------------------------------------------------------------

def _create(client, **body):
    return client.post("/v1/fine_tuning/jobs", json=body)


def test_create_job_object_and_defaults(client):
    train = upload(client, chat_rows(20)).json()["id"]
    valid = upload(client, chat_rows(4, offset=100)).json()["id"]
    r = _create(client, model="tiny", training_file=train, validation_file=valid, suffix="my-model", seed=7,
                metadata={"team": "nlp"}, hyperparameters={"n_epochs": 2})
    assert r.status_code == 200, r.text
    job = r.json()
    assert JOB_KEYS <= set(job)
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert job["status"] == "validating_files" and job["model"] == "tiny"
    assert job["fine_tuned_model"] is None and job["error"] is None and job["finished_at"] is None
    assert job["trained_tokens"] is None and job["result_files"] == [] and job["estimated_finish"] is None
    assert job["seed"] == 7 and job["metadata"] == {"team": "nlp"} and job["user_provided_suffix"] == "my-model"
    assert job["organization_id"] == "tunesmith"
    assert (job["training_file"], job["validation_file"]) == (train, valid)
    # "auto" resolved: the template's batch size, multiplier 1; epochs as asked
    assert job["hyperparameters"] == {"batch_size": 4, "learning_rate_multiplier": 1.0, "n_epochs": 2}
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": job["hyperparameters"]}}
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json() == job
    # without a template epoch count, "auto" epochs follow OpenAI's rule: 100 // 20 examples = 5
    auto = _create(client, model="tiny", training_file=train).json()
    assert auto["hyperparameters"]["n_epochs"] == 5 and 0 <= auto["seed"] <= 2147483647
    from tunesmith.jobs.recipe import auto_epochs
    assert (auto_epochs(20), auto_epochs(1000), auto_epochs(20000)) == (5, 3, 1)


def test_create_dpo_job(client, ctx):
    train = upload(client, dpo_rows(10)).json()["id"]
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "learning_rate_multiplier": 2,
                                                         "batch_size": 2}}}
    job = _create(client, model="tiny", training_file=train, method=method).json()
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.25
    assert job["hyperparameters"]["learning_rate_multiplier"] == 2 and job["hyperparameters"]["batch_size"] == 2
    from sqlalchemy import select

    from tunesmith.jobs.db import JobRow
    with ctx.db.session() as s:
        recipe = s.scalar(select(JobRow.recipe).where(JobRow.id == job["id"]))
    assert recipe["objective"] == {"name": "dpo", "beta": 0.25} and recipe["task"] == "preference"
    assert recipe["train"]["lr"] == pytest.approx(2e-2) and recipe["train"]["batch_size"] == 2
    assert recipe["model"]["name"] == ctx.settings.models["tiny"] and recipe["data"]["format"] == "preference"
    assert recipe["eval"]["compare_base"] is False and recipe["export"]["verify"] is False


REJECTED = [
    ({"model": "gpt-9"}, "model", "does not exist"),
    ({"training_file": "file-missing"}, "training_file", "no such file"),
    ({"validation_file": "file-missing"}, "validation_file", "no such file"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "expected \"auto\" or an integer"),
    ({"hyperparameters": {"n_epochs": 2.5}}, "hyperparameters.n_epochs", None),
    ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size", None),
    ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier", None),
    ({"hyperparameters": {"learning_rate_multiplier": 1000}}, "hyperparameters.learning_rate_multiplier",
     "learning rate below 1"),
    ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup", "Unknown hyperparameter"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}},
     "method.supervised.hyperparameters.beta", "Unknown hyperparameter"),
    ({"method": {"type": "reinforcement"}}, "method.type", "not supported"),
    ({"method": {"type": "magic"}}, "method.type", None),
    ({"method": {"type": "dpo"}}, "training_file", "needs preference pairs"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
      "hyperparameters": {"n_epochs": 2}}, "hyperparameters", "both"),
    ({"suffix": "has:colon"}, "suffix", None),
    ({"suffix": "x" * 65}, "suffix", None),
    ({"seed": -1}, "seed", None),
    ({"seed": "7"}, "seed", None),
    ({"metadata": {"k": 1}}, "metadata.k", None),
]


def test_create_job_rejects(client):
    train = upload(client, chat_rows(3)).json()["id"]
    for body, param, text in REJECTED:
        full = {"model": "tiny", "training_file": train, **body}
        assert_error(_create(client, **full), 400, param=param, text=text)
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []      # nothing was created


def test_create_job_bad_bodies_and_file_purpose(client):
    batch = upload(client, b'{"a": 1}\n', purpose="batch").json()["id"]
    assert_error(_create(client, model="tiny", training_file=batch), 400, param="training_file",
                 text="purpose 'batch'")
    dpo = upload(client, dpo_rows(3)).json()["id"]
    beta = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.5}}}
    assert_error(_create(client, model="tiny", training_file=dpo, method=beta), 400,
                 param="method.dpo.hyperparameters.beta")
    assert_error(client.post("/v1/fine_tuning/jobs", content=b"{nope", headers={"content-type": "application/json"}),
                 400, text="not valid JSON")
    assert_error(client.post("/v1/fine_tuning/jobs", json=[1]), 400, text="JSON object")
    assert_error(_create(client, training_file=dpo), 400, param="model")
    assert_error(_create(client, model="tiny"), 400, param="training_file")


def test_list_jobs_pagination_and_metadata(client):
    train = upload(client, chat_rows(3)).json()["id"]
    ids = [_create(client, model="tiny", training_file=train, metadata={"i": str(i), "even": str(i % 2 == 0)})
           .json()["id"] for i in range(5)]
    page1 = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert page1["object"] == "list" and page1["has_more"] is True
    assert [j["id"] for j in page1["data"]] == [ids[4], ids[3]]
    page2 = client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": ids[3]}).json()
    assert [j["id"] for j in page2["data"]] == [ids[2], ids[1]] and page2["has_more"] is True
    page3 = client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": ids[1]}).json()
    assert [j["id"] for j in page3["data"]] == [ids[0]] and page3["has_more"] is False
    assert [j["id"] for j in client.get("/v1/fine_tuning/jobs").json()["data"]] == ids[::-1]
    even = client.get("/v1/fine_tuning/jobs", params={"metadata[even]": "True", "limit": 2}).json()
    assert [j["id"] for j in even["data"]] == [ids[4], ids[2]] and even["has_more"] is True
    assert [j["id"] for j in client.get("/v1/fine_tuning/jobs", params={
        "metadata[even]": "True", "limit": 2, "after": ids[2]}).json()["data"]] == [ids[0]]
    assert client.get("/v1/fine_tuning/jobs", params={"metadata[i]": "9"}).json()["data"] == []
    assert_error(client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"}), 400, param="after")


def test_unknown_jobs_and_invalid_transitions(client):
    train = upload(client, chat_rows(3)).json()["id"]
    job_id = _create(client, model="tiny", training_file=train).json()["id"]
    assert_error(client.get("/v1/fine_tuning/jobs/ftjob-nope"), 404, text="ftjob-nope")
    for action in ("cancel", "pause", "resume"):
        assert_error(client.post(f"/v1/fine_tuning/jobs/ftjob-nope/{action}"), 404)
    assert_error(client.get("/v1/fine_tuning/jobs/ftjob-nope/events"), 404)
    assert_error(client.get("/v1/fine_tuning/jobs/ftjob-nope/checkpoints"), 404)
    # validating_files cannot be paused or resumed
    assert_error(client.post(f"/v1/fine_tuning/jobs/{job_id}/pause"), 400, code="invalid_job_state",
                 text="'validating_files'")
    assert_error(client.post(f"/v1/fine_tuning/jobs/{job_id}/resume"), 400, code="invalid_job_state")
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "validating_files"


def test_pause_resume_cancel_transitions(client, ctx):
    from tunesmith.jobs.worker import Worker, WorkerConfig
    train = upload(client, chat_rows(3)).json()["id"]
    job_id = _create(client, model="tiny", training_file=train).json()["id"]
    Worker(WorkerConfig(db_url=ctx.settings.db_url, runs_dir=ctx.files_dir.parent / "runs"), ctx.db).validate_pending()
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "queued"
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()["status"] == "paused"
    assert_error(client.post(f"/v1/fine_tuning/jobs/{job_id}/pause"), 400, text="'paused'")
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()["status"] == "queued"
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()
    assert cancelled["status"] == "cancelled" and isinstance(cancelled["finished_at"], int)
    for action in ("cancel", "pause", "resume"):
        err = assert_error(client.post(f"/v1/fine_tuning/jobs/{job_id}/{action}"), 400, code="invalid_job_state")
        assert "'cancelled'" in err["message"]
    # events: newest first, paginated with after/limit/has_more
    page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 3}).json()
    assert page["object"] == "list" and page["has_more"] is True and len(page["data"]) == 3
    ev = page["data"][0]
    assert set(ev) == {"object", "id", "created_at", "level", "message", "type", "data"}
    assert ev["object"] == "fine_tuning.job.event" and ev["id"].startswith("ftevent-")
    assert ev["message"] == "Fine-tuning job cancelled" and ev["level"] == "info" and ev["type"] == "message"
    rest = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": page["data"][-1]["id"]}).json()
    messages = [e["message"] for e in page["data"] + rest["data"]][::-1]
    assert messages == [f"Created fine-tuning job: {job_id}", f"Validating training file: {train}",
                        "Files validated, moving job to queued state",
                        "Pause requested: training stops at its next checkpoint",
                        "Job resumed: waiting for a worker to continue from the last checkpoint",
                        "Fine-tuning job cancelled"]
    assert rest["has_more"] is False
    ck = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()
    assert ck == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    # the cancelled job is never claimed
    assert Worker(WorkerConfig(db_url=ctx.settings.db_url, runs_dir=ctx.files_dir.parent / "runs"),
                  ctx.db).claim() is None


def test_lost_training_file_fails_validation(client, ctx):
    """The API refuses to delete a file an unfinished job uses; bytes lost on the server fail the job clearly."""
    from pathlib import Path

    from tunesmith.jobs.worker import Worker, WorkerConfig
    train = upload(client, chat_rows(3)).json()["id"]
    job_id = _create(client, model="tiny", training_file=train).json()["id"]
    assert_error(client.delete(f"/v1/files/{train}"), 409, param="file_id", code="file_in_use", text=job_id)
    stored = next(Path(ctx.files_dir).glob(f"{train}.*"))
    stored.unlink()
    Worker(WorkerConfig(db_url=ctx.settings.db_url, runs_dir=ctx.files_dir.parent / "runs"), ctx.db).validate_pending()
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "failed" and isinstance(job["finished_at"], int)
    assert job["error"]["code"] == "invalid_training_file" and job["error"]["param"] == "training_file"
    assert train in job["error"]["message"]
    assert client.delete(f"/v1/files/{train}").json()["deleted"] is True     # the job is finished now


def test_files_of_unfinished_jobs_cannot_be_deleted(client, ctx):
    from sqlalchemy import update

    from tunesmith.jobs.db import FileRow, transition
    train = upload(client, chat_rows(3)).json()["id"]
    valid = upload(client, chat_rows(2, offset=50)).json()["id"]
    other = upload(client, chat_rows(2, offset=90)).json()["id"]
    job_id = _create(client, model="tiny", training_file=train, validation_file=valid).json()["id"]
    for status in ("validating_files", "queued", "running", "paused"):
        with ctx.db.session() as s:
            assert transition(s, job_id, None, status=status)
        for file_id in (train, valid):
            err = assert_error(client.delete(f"/v1/files/{file_id}"), 409, param="file_id", code="file_in_use")
            assert job_id in err["message"] and "Cancel the job" in err["message"]
            assert client.get(f"/v1/files/{file_id}").status_code == 200          # still there, bytes too
            assert client.get(f"/v1/files/{file_id}/content").status_code == 200
    assert client.delete(f"/v1/files/{other}").json() == {"id": other, "object": "file", "deleted": True}
    # an expired file is kept while the job needs it
    with ctx.db.session() as s:
        s.execute(update(FileRow).where(FileRow.id == train).values(expires_at=1))
    assert client.get(f"/v1/files/{train}").status_code == 200
    assert train in [f["id"] for f in client.get("/v1/files").json()["data"]]
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert client.delete(f"/v1/files/{valid}").json()["deleted"] is True
    assert_error(client.get(f"/v1/files/{train}"), 404)                      # expired, and no longer in use


def test_nested_json_and_body_limits(client, ctx):
    deep = "[" * 100_000 + "]" * 100_000
    assert_error(upload(client, ('{"messages": ' + deep + "}\n").encode()), 413, code="file_too_large")
    # within the upload limit (20 kB here): a clear 400 naming the problem
    r = upload(client, ('{"messages": ' + "[" * 5000 + "]" * 5000 + "}\n").encode())
    assert_error(r, 400, param="file", code="invalid_file_format", text="nested")
    r = client.post("/v1/fine_tuning/jobs", content=deep[:15000] + deep[-15000:],
                    headers={"content-type": "application/json"})
    assert_error(r, 400, text="nested too deeply")
    train = upload(client, chat_rows(3)).json()["id"]
    nested = {"type": "wandb", "wandb": {"x": [[[[[[[[[[1]]]]]]]]]]}}
    assert_error(_create(client, model="tiny", training_file=train, integrations=[nested]), 400, param="integrations")
    # a chunked upload (no Content-Length) over the limit is stopped while it is read
    def chunks():
        yield (b'--zzz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--zzz\r\n'
               b'Content-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n')
        for _ in range(100):
            yield b"x" * 1000
        yield b"\r\n--zzz--\r\n"
    r = client.post("/v1/files", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert_error(r, 413, param="file", code="file_too_large")


def test_sqlite_database_settings(tmp_path):
    from sqlalchemy import inspect, text

    from tunesmith.jobs.db import Database
    from tunesmith.jobs.settings import JobsSettings
    url = f"sqlite:///{tmp_path / 'deep' / 'jobs.db'}"
    db = Database(url)
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert {"files", "jobs", "events", "checkpoints"} <= set(inspect(db.engine).get_table_names())
    db.dispose()
    # file bytes live beside the database unless told otherwise
    assert JobsSettings(db_url=url).resolved_files_dir() == tmp_path / "deep" / "files"
