"""The jobs worker over SQLite and PostgreSQL: full runs, DPO, cancel, pause/resume, atomic claims, restarts."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from jobs_util import chat_rows, db_url_for, dpo_rows, events, router_client, settings_for, upload, wait_for

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    return db_url_for(request.param, tmp_path)


@pytest.fixture
def ctx(db_url, tmp_path, tiny_model_dir):
    from tunesmith.jobs.settings import JobsContext
    c = JobsContext(settings_for(db_url, tmp_path, tiny_model_dir))
    yield c
    c.db.dispose()


@pytest.fixture
def client(ctx):
    with router_client(ctx) as c:
        yield c


def worker_config(ctx, tmp_path, **kw):
    from tunesmith.jobs.worker import WorkerConfig
    return WorkerConfig(db_url=ctx.settings.db_url, runs_dir=tmp_path / "runs", poll_s=0.02, **kw)


def create_job(client, rows=None, **body):
    train = upload(client, rows or chat_rows(24)).json()["id"]
    r = client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": train, **body})
    assert r.status_code == 200, r.text
    return r.json()


def job(client, job_id):
    return client.get(f"/v1/fine_tuning/jobs/{job_id}").json()


def metrics_steps(evs):
    return [e["data"]["step"] for e in evs if e["type"] == "metrics" and "train_loss" in e["data"]]


def test_job_runs_to_success(client, ctx, tmp_path):
    from tunesmith.jobs.source import JobsModelSource
    from tunesmith.jobs.worker import Worker
    valid = upload(client, chat_rows(6, offset=500)).json()["id"]
    created = create_job(client, suffix="greeter", seed=3, validation_file=valid,
                         hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5})
    w = Worker(worker_config(ctx, tmp_path), ctx.db)
    assert w.run_until_idle() == 1     # validated, claimed and trained in one round
    done = job(client, created["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"] == f"ft:tiny:tunesmith:greeter:{created['id'][-8:]}"
    assert done["trained_tokens"] > 0 and isinstance(done["finished_at"], int) and done["error"] is None
    assert done["estimated_finish"] is None
    # the run: one run dir recorded on the job, trained with the mapped hyperparameters
    from tunesmith.config import load_recipe
    from tunesmith.jobs.db import JobRow
    with ctx.db.session() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == created["id"]))
    run_dir = Path(row.run_dir)
    assert run_dir.parent == (tmp_path / "runs").resolve() and run_dir.name == f"{created['id']}-001"
    recipe = load_recipe(run_dir / "recipe.yaml")
    assert (recipe.train.epochs, recipe.train.batch_size, recipe.train.seed) == (2, 4, 3)
    assert recipe.train.lr == pytest.approx(5e-3) and recipe.objective.name == "sft"
    assert (run_dir / "export" / "merged" / "config.json").is_file() and row.worker_id is None
    assert row.step == row.total_steps == 12       # 24 examples / batch 4 * 2 epochs
    # events, oldest first
    evs = events(client, created["id"])
    messages = [e["message"] for e in evs]
    assert messages[:4] == [f"Created fine-tuning job: {created['id']}",
                            f"Validating training file: {created['training_file']} and validation file: {valid}",
                            "Files validated, moving job to queued state", "Fine-tuning job started"]
    assert messages[-2:] == [f"New fine-tuned model created: {done['fine_tuned_model']}",
                             "The job has successfully completed"]
    assert metrics_steps(evs) == list(range(1, 13))
    step_event = next(e for e in evs if e["type"] == "metrics")
    assert step_event["message"].startswith("Step 1/12: training loss=")
    assert set(step_event["data"]) >= {"step", "train_loss", "total_steps"}
    val_events = [e for e in evs if e["type"] == "metrics" and "valid_loss" in e["data"]]
    assert [e["data"]["step"] for e in val_events] == [3, 6, 9, 12]
    # checkpoints every 3 steps, newest first, with metrics
    ck = client.get(f"/v1/fine_tuning/jobs/{created['id']}/checkpoints").json()
    assert [c["step_number"] for c in ck["data"]] == [12, 9, 6, 3] and ck["has_more"] is False
    top = ck["data"][0]
    assert top["object"] == "fine_tuning.job.checkpoint" and top["id"].startswith("ftckpt_")
    assert top["fine_tuned_model_checkpoint"] == f"{done['fine_tuned_model']}:ckpt-step-12"
    assert top["fine_tuning_job_id"] == created["id"] and (ck["first_id"], ck["last_id"]) == (top["id"], ck["data"][-1]["id"])
    assert set(top["metrics"]) >= {"step", "train_loss", "valid_loss", "full_valid_loss"}
    paged = client.get(f"/v1/fine_tuning/jobs/{created['id']}/checkpoints", params={"limit": 3}).json()
    assert paged["has_more"] is True and len(paged["data"]) == 3
    assert sum(f"Checkpoint created at step {n}" in messages for n in (3, 6, 9, 12)) == 4
    # result file: CSV of per-step metrics
    [result] = done["result_files"]
    meta = client.get(f"/v1/files/{result}").json()
    assert meta["purpose"] == "fine-tune-results" and meta["filename"] == "step_metrics.csv"
    table = list(csv.DictReader(io.StringIO(client.get(f"/v1/files/{result}/content").text)))
    assert [int(r["step"]) for r in table] == list(range(1, 13)) and float(table[0]["train_loss"]) > 0
    assert table[2]["valid_loss"] and not table[0]["valid_loss"]
    # servable at once
    [served] = JobsModelSource(ctx.db).models()
    assert served.id == done["fine_tuned_model"] and Path(served.run_dir) == run_dir
    assert served.owned_by == "tunesmith" and served.created == done["finished_at"]


def test_dpo_job(client, ctx, tmp_path):
    from tunesmith.jobs.worker import Worker
    created = create_job(client, rows=dpo_rows(12), method={"type": "dpo", "dpo": {"hyperparameters": {
        "beta": 0.2, "n_epochs": 1, "batch_size": 4}}})
    Worker(worker_config(ctx, tmp_path), ctx.db).run_until_idle()
    done = job(client, created["id"])
    assert done["status"] == "succeeded", done["error"]
    from tunesmith.config import load_recipe
    run_dir = next((tmp_path / "runs").glob(f"{created['id']}-*"))
    recipe = load_recipe(run_dir / "recipe.yaml")
    assert recipe.objective.name == "dpo" and recipe.objective.beta == 0.2 and recipe.task == "preference"
    assert metrics_steps(events(client, created["id"])) == [1, 2, 3]


def test_training_error_fails_the_job(client, ctx, tmp_path):
    from tunesmith.jobs.worker import Worker
    ctx.settings.template = {**ctx.settings.template, "data": {"max_length": 16}}
    long = [{"messages": [{"role": "user", "content": "word " * 40},
                          {"role": "assistant", "content": "answer " * 40}]} for _ in range(4)]
    created = create_job(client, rows=long)
    Worker(worker_config(ctx, tmp_path), ctx.db).run_until_idle()
    done = job(client, created["id"])
    assert done["status"] == "failed" and done["fine_tuned_model"] is None
    assert done["error"]["code"] == "training_failed" and "max_length" in done["error"]["message"]
    assert events(client, created["id"])[-1]["level"] == "error"


@pytest.fixture
def running_worker(ctx, tmp_path):
    from tunesmith.jobs.worker import WorkerThread
    thread = WorkerThread(worker_config(ctx, tmp_path), ctx.db).start()
    yield thread
    thread.stop()


def test_cancel_while_training(client, ctx, running_worker):
    created = create_job(client, hyperparameters={"n_epochs": 50})    # 300 steps: far longer than the test
    wait_for(lambda: metrics_steps(events(client, created["id"])), what="training to start")
    assert client.post(f"/v1/fine_tuning/jobs/{created['id']}/cancel").json()["status"] == "cancelled"
    evs = wait_for(lambda: [e for e in events(client, created["id"]) if e["message"].startswith("Training stopped")]
                   and events(client, created["id"]), what="the worker to stop")
    stopped = next(e for e in evs if e["message"].startswith("Training stopped"))
    step = int(stopped["message"].split("step ")[1].split(":")[0])
    assert step < 300 and max(metrics_steps(evs)) <= step
    done = job(client, created["id"])
    assert done["status"] == "cancelled" and done["fine_tuned_model"] is None and done["trained_tokens"] is None
    from tunesmith.jobs.db import JobRow
    with ctx.db.session() as s:
        assert s.scalar(select(JobRow.worker_id).where(JobRow.id == created["id"])) is None


def test_pause_and_resume_continue_from_checkpoint(client, ctx, running_worker):
    created = create_job(client, hyperparameters={"n_epochs": 4})     # 24 steps, checkpoints every 3
    job_id = created["id"]
    wait_for(lambda: metrics_steps(events(client, job_id)), what="training to start")
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()["status"] == "paused"
    paused = wait_for(lambda: next((e for e in events(client, job_id) if e["message"].startswith("Job paused")), None),
                      what="the pause to take effect")
    at = paused["data"]["step"]
    assert at % 3 == 0 and at < 24
    assert job(client, job_id)["status"] == "paused"
    time.sleep(0.2)     # a paused job stays paused: the worker does not pick it up
    assert job(client, job_id)["status"] == "paused"
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()["status"] == "queued"
    wait_for(lambda: job(client, job_id)["status"] == "succeeded", what="the resumed job to finish")
    evs = events(client, job_id)
    i = next(i for i, e in enumerate(evs) if e["message"] == f"Resuming from checkpoint at step {at}")
    assert evs[i]["data"] == {"step": at, "resumed": True}
    assert metrics_steps(evs[i:])[0] == at + 1 and metrics_steps(evs[i:])[-1] == 24
    assert metrics_steps(evs) == list(range(1, 25))      # no step reported twice across the pause
    steps = [c["step_number"] for c in client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
                                                   params={"limit": 100}).json()["data"]]
    assert steps == sorted(set(steps), reverse=True) and steps[0] == 24   # each checkpoint recorded once
    assert len(list((ctx.files_dir.parent / "runs").glob(f"{job_id}-*"))) == 1   # the same run continued


def test_claims_are_atomic(client, ctx, tmp_path):
    from tunesmith.jobs.worker import Worker
    ids = {create_job(client, rows=chat_rows(3))["id"] for _ in range(8)}
    workers = [Worker(worker_config(ctx, tmp_path, worker_id=f"w{i}"), ctx.db) for i in range(4)]
    workers[0].validate_pending()
    claimed: list[tuple[str, str]] = []
    lock, start = threading.Lock(), threading.Barrier(len(workers))

    def take(w):
        start.wait()
        while (job_id := w.claim()) is not None:
            with lock:
                claimed.append((w.id, job_id))
    threads = [threading.Thread(target=take, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for _, j in claimed) == sorted(ids)          # every job exactly once
    from tunesmith.jobs.db import JobRow
    with ctx.db.session() as s:
        rows = s.execute(select(JobRow.id, JobRow.status, JobRow.worker_id)).all()
    assert {r.id: r.worker_id for r in rows} == {j: w for w, j in claimed}
    assert {r.status for r in rows} == {"running"}


def test_stale_jobs_are_recovered(client, ctx, tmp_path):
    from tunesmith.jobs.db import JobRow
    from tunesmith.jobs.worker import Worker
    a, b, c, d = (create_job(client, rows=chat_rows(3))["id"] for _ in range(4))
    w = Worker(worker_config(ctx, tmp_path, stale_s=5), ctx.db)
    w.validate_pending()
    old, fresh = time.time() - 60, time.time()
    with ctx.db.session() as s:
        for job_id, status, owner, beat in ((a, "running", "elsewhere:1:gone", old),
                                            (b, "running", "elsewhere:1:gone", fresh),
                                            (c, "paused", "elsewhere:1:gone", old),
                                            (d, "running", w.id, fresh)):     # left over from this worker's crash
            s.execute(update(JobRow).where(JobRow.id == job_id).values(status=status, worker_id=owner,
                                                                        heartbeat_at=beat))
    assert sorted(w.recover_stale()) == sorted([a, d])
    with ctx.db.session() as s:
        state = {r.id: (r.status, r.worker_id) for r in s.execute(select(JobRow.id, JobRow.status, JobRow.worker_id))}
    assert state == {a: ("queued", None), b: ("running", "elsewhere:1:gone"), c: ("paused", None),
                     d: ("queued", None)}
    assert "resumes from its last checkpoint" in events(client, a)[-1]["message"]


def _spawn_worker(db_url: str, runs: Path, log: Path) -> subprocess.Popen:
    """`tunesmith worker` in its own process."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "worker", "--db", db_url, "--runs", str(runs),
                             "--poll", "0.05", "--heartbeat", "0.2"],
                            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def test_killed_worker_job_resumes_in_new_worker(client, ctx, tmp_path):
    from tunesmith.jobs.worker import Worker
    created = create_job(client, hyperparameters={"n_epochs": 20})    # 120 steps of the tiny model
    job_id, runs, log = created["id"], tmp_path / "runs", tmp_path / "worker.log"
    first = _spawn_worker(ctx.settings.db_url, runs, log)
    try:
        ck = wait_for(lambda: client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"], timeout=60,
                      what="a first checkpoint")
        waiting = create_job(client, rows=chat_rows(4), hyperparameters={"n_epochs": 1})["id"]
        wait_for(lambda: job(client, waiting)["status"] == "queued", what="the second job to be queued")
        first.send_signal(signal.SIGKILL)
        first.wait(10)       # reaped: its pid is gone
    finally:
        if first.poll() is None:
            first.kill()
    before = events(client, job_id)
    assert job(client, job_id)["status"] == "running" and max(metrics_steps(before)) < 120, log.read_text()[-2000:]
    assert job(client, waiting)["status"] == "queued"
    # a new worker (stale_after is long: the dead process is recognised by its pid on this host)
    Worker(worker_config(ctx, tmp_path, stale_s=30), ctx.db).run_until_idle()
    done = job(client, job_id)
    assert done["status"] == "succeeded", done["error"]
    assert job(client, waiting)["status"] == "succeeded"
    evs = events(client, job_id)
    messages = [e["message"] for e in evs]
    assert any("The worker running this job stopped" in m for m in messages)
    assert not any("stopped" in e["message"] for e in events(client, waiting))
    i = next(i for i, e in enumerate(evs) if e["message"].startswith("Resuming from checkpoint at step"))
    at = evs[i]["data"]["step"]
    assert at >= ck[-1]["step_number"] and at % 3 == 0
    assert metrics_steps(evs[i:])[0] == at + 1 and metrics_steps(evs[i:])[-1] == 120
    assert len(list(runs.glob(f"{job_id}-*"))) == 1


def test_worker_shutdown_requeues_running_job(client, ctx, tmp_path):
    from tunesmith.jobs.worker import Worker, WorkerThread
    created = create_job(client, hyperparameters={"n_epochs": 10})
    job_id = created["id"]
    thread = WorkerThread(worker_config(ctx, tmp_path), ctx.db).start()
    try:
        wait_for(lambda: client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"],
                 what="a first checkpoint")
    finally:
        thread.stop()
    assert not thread.thread.is_alive()
    assert job(client, job_id)["status"] == "queued"
    assert "The worker shut down at step" in events(client, job_id)[-1]["message"]
    Worker(worker_config(ctx, tmp_path), ctx.db).run_until_idle()
    assert job(client, job_id)["status"] == "succeeded"
    assert any(e["message"].startswith("Resuming from checkpoint") for e in events(client, job_id))


def test_standalone_app_with_worker_thread(db_url, tmp_path, tiny_model_dir):
    from tunesmith.jobs.app import create_app
    from tunesmith.jobs.worker import WorkerConfig
    settings = settings_for(db_url, tmp_path, tiny_model_dir)
    app = create_app(settings, worker=WorkerConfig(db_url=db_url, runs_dir=tmp_path / "runs", poll_s=0.02))
    with TestClient(app) as c:
        created = create_job(c, rows=chat_rows(8), hyperparameters={"n_epochs": 1})
        wait_for(lambda: job(c, created["id"])["status"] == "succeeded", what="the job to succeed")
        missing = c.get("/v1/nothing-here")
        assert missing.status_code == 404
    assert not app.state.jobs._thread        # the worker stopped with the app
    app.state.jobs.ctx.db.dispose()


def test_cli_worker_once(client, ctx, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli.serve import worker_app as app
    created = create_job(client, hyperparameters={"n_epochs": 1})
    result = CliRunner().invoke(app, ["--db", ctx.settings.db_url, "--runs", str(tmp_path / "runs"), "--once"])
    assert result.exit_code == 0, result.output
    assert "idle after" in result.output
    assert job(client, created["id"])["status"] == "succeeded"


def test_job_continues_a_fine_tuned_model(client, ctx, tmp_path):
    """model "ft:…": the new job trains from that job's adapter with a replay of its data, and is named for the
    same base; an unknown ft: model or a DPO job on it is a 400 and creates nothing."""
    from tunesmith.jobs.worker import Worker
    from tunesmith.rundir import Layout, Run
    first = create_job(client, seed=1, hyperparameters={"n_epochs": 1})
    w = Worker(worker_config(ctx, tmp_path), ctx.db)
    w.run_until_idle()
    parent = job(client, first["id"])
    assert parent["status"] == "succeeded", parent["error"]
    ft = parent["fine_tuned_model"]
    before = client.get("/v1/fine_tuning/jobs").json()["data"]
    train = upload(client, chat_rows(16, offset=900)).json()["id"]
    r = client.post("/v1/fine_tuning/jobs", json={"model": ft + "0", "training_file": train})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found", r.text
    dpo = upload(client, dpo_rows(8)).json()["id"]
    r = client.post("/v1/fine_tuning/jobs", json={"model": ft, "training_file": dpo, "method": {"type": "dpo"}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported", r.text
    assert len(client.get("/v1/fine_tuning/jobs").json()["data"]) == len(before)
    r = client.post("/v1/fine_tuning/jobs", json={"model": ft, "training_file": train, "seed": 2,
                                                  "hyperparameters": {"n_epochs": 1}})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["model"] == ft
    w.run_until_idle()
    done = job(client, second["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"] == f"ft:tiny:tunesmith::{second['id'][-8:]}"
    run_dir = next((tmp_path / "runs").glob(f"{second['id']}-*"))
    parent_dir = next((tmp_path / "runs").glob(f"{first['id']}-*"))
    record = Layout(run_dir).stages()["continue"]
    assert record["parent"] == ft and Path(record["parent_run"]) == parent_dir.resolve()
    assert record["strategy"] == "replay" and record["replay"]["count"] > 0
    assert Path(record["init_from"]) == Run(parent_dir).model_dir.resolve()
    recipe = Run(run_dir).recipe
    assert recipe.model.from_ == ft and recipe.model.name == Run(parent_dir).recipe.model.name
    assert Run(run_dir).load_json("train.json")["continuation"]["parent"] == ft
