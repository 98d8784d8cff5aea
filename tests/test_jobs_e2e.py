"""End to end with the official openai client: a real uvicorn server (inference + files + jobs) and a worker."""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from jobs_util import TEMPLATE, chat_rows, db_url_for, jsonl

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    return db_url_for(request.param, tmp_path)


def _wait_done(client, job_id: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.05)


def _server(serve_settings, db_url, runs_dir, template, **kw):
    """Inference + jobs the way `tunesmith serve --jobs-db` wires them: one app, one worker thread."""
    from tunesmith.jobs.app import parts_for_server
    from tunesmith.serve import create_app
    from tunesmith.serve.background import BackgroundServer
    parts = parts_for_server(db_url, base_id=serve_settings.base_id, base_model=serve_settings.model,
                             runs_dir=runs_dir, template=template, poll_s=0.05, **kw)
    app = create_app(serve_settings, sources=parts.sources, routers=parts.routers)
    return parts, BackgroundServer(app)


def test_openai_client_fine_tunes_and_chats(db_url, tmp_path, tiny_model_dir):
    from tunesmith.serve import ServeSettings
    serve_settings = ServeSettings(model=str(tiny_model_dir), model_id="tiny", device="cpu", api_keys=["sk-test"],
                                   default_max_tokens=8)
    parts, server = _server(serve_settings, db_url, tmp_path / "runs", TEMPLATE, files_dir=tmp_path / "files")
    with server as srv, parts.worker_running():
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-test", max_retries=0)
        # authentication covers the jobs endpoints too
        assert httpx.get(f"{srv.url}/v1/files").status_code == 401
        body = jsonl(chat_rows(24))
        f = client.files.create(file=("greetings.jsonl", body), purpose="fine-tune")
        assert f.status == "processed" and f.bytes == len(body) and f.purpose == "fine-tune"
        assert client.files.wait_for_processing(f.id, poll_interval=0.05).status == "processed"
        assert client.files.content(f.id).read() == body
        assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]
        with pytest.raises(openai.BadRequestError) as bad:
            client.files.create(file=("bad.jsonl", b'{"messages": 3}\n'), purpose="fine-tune")
        assert "line 1" in bad.value.message and bad.value.param == "file"

        job = client.fine_tuning.jobs.create(
            model="tiny", training_file=f.id, suffix="e2e", seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
        assert job.status == "validating_files" and job.fine_tuned_model is None and job.hyperparameters.n_epochs == 2
        done = _wait_done(client, job.id)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"ft:tiny:tunesmith:e2e:{job.id[-8:]}" and done.trained_tokens > 0
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=7))      # auto-pagination
        assert events[0].message == "The job has successfully completed"            # newest first
        assert events[-1].message == f"Created fine-tuning job: {job.id}"
        steps = sorted(e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data)
        assert steps == list(range(1, 13))
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id)
        assert [c.step_number for c in ckpts.data] == [12, 9, 6, 3]
        assert ckpts.data[0].metrics.train_loss > 0
        assert ckpts.data[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-12"
        [result] = done.result_files
        assert client.files.content(result).read().startswith(b"step,train_loss")

        # the new model is served at once, under its ft: name
        assert done.fine_tuned_model in [m.id for m in client.models.list()]
        messages = [{"role": "user", "content": "Say hi to number 3"}]
        reply = client.chat.completions.create(model=done.fine_tuned_model, messages=messages, max_tokens=6,
                                               temperature=0)
        assert reply.model == done.fine_tuned_model and reply.choices[0].message.role == "assistant"
        assert reply.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(model=done.fine_tuned_model, messages=messages, max_tokens=6,
                                                     temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == reply.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")

        # pages of jobs: limit/after and the client's auto-pagination
        more = [client.fine_tuning.jobs.create(model="tiny", training_file=f.id).id for _ in range(3)]
        for job_id in more:
            client.fine_tuning.jobs.cancel(job_id)
        newest_first = [*more[::-1], job.id]
        page = client.fine_tuning.jobs.list(limit=2)
        assert [j.id for j in page.data] == newest_first[:2] and page.has_more
        second = page.get_next_page()
        assert [j.id for j in second.data] == newest_first[2:] and not second.has_next_page()
        assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == newest_first
        assert {client.fine_tuning.jobs.retrieve(j).status for j in more} == {"cancelled"}

        # errors arrive as the SDK's typed exceptions
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.retrieve("ftjob-missing")
        with pytest.raises(openai.BadRequestError) as bad:
            client.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": 0})
        assert bad.value.param == "hyperparameters.n_epochs"
        with pytest.raises(openai.BadRequestError) as bad:
            client.fine_tuning.jobs.cancel(job.id)
        assert bad.value.code == "invalid_job_state"
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.pause(job.id)
        assert client.files.delete(f.id).deleted
    assert not parts._thread


@pytest.mark.slow
def test_real_model_job_and_chat(tmp_path):
    """The built-in SmolLM2-135M-Instruct: a few LoRA steps through the API, then chat with the result."""
    from tunesmith.serve import ServeSettings
    template = {"data": {"max_length": 128}, "train": {"max_steps": 3, "batch_size": 2, "eval_every": 2,
                                                       "save_every": 2}}
    parts, server = _server(ServeSettings(device="cpu", default_max_tokens=16), f"sqlite:///{tmp_path / 'jobs.db'}",
                            tmp_path / "runs", template)
    with server as srv, parts.worker_running():
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                              {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(12)]
        f = client.files.create(file=("sums.jsonl", jsonl(rows)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=f.id, suffix="sums",
                                             hyperparameters={"n_epochs": 1})
        done = _wait_done(client, job.id, timeout=900)
        assert done.status == "succeeded", done.error
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [3, 2]
        reply = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=12, temperature=0,
                                               messages=[{"role": "user", "content": "What is 7 plus 7?"}])
        text = reply.choices[0].message.content
        assert text.strip()
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=done.fine_tuned_model, max_tokens=12, temperature=0, stream=True,
            messages=[{"role": "user", "content": "What is 7 plus 7?"}]) if c.choices)
        assert streamed == text
