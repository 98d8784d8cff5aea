"""Helpers shared by the jobs tests: data rows, the tiny-model job template, database URLs, waiting."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import pg

# recipe sections every test job uses: the tiny model trains a step in milliseconds
TEMPLATE = {
    "data": {"max_length": 64},
    "method": {"name": "lora", "r": 4, "alpha": 8},
    "train": {"batch_size": 4, "lr": 1e-2, "eval_every": 3, "save_every": 3, "early_stopping_patience": None,
              "threads": 1},
    "eval": {"max_new_tokens": 4, "batch_size": 8},
    "export": {"check_parity": False},
}


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "You are brief."},
                          {"role": "user", "content": f"Say hi to number {i}"},
                          {"role": "assistant", "content": f"hi there {i}"}]} for i in range(offset, offset + n)]


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": f"The capital of France is {i}?", "completion": "Paris."} for i in range(n)]


def dpo_rows(n: int) -> list[dict]:
    return [{"input": {"messages": [{"role": "user", "content": f"Is the movie {i} good?"}]},
             "preferred_output": [{"role": "assistant", "content": "yes, wonderful"}],
             "non_preferred_output": [{"role": "assistant", "content": "no, bland"}]} for i in range(n)]


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def db_url_for(backend: str, tmp_path: Path) -> str:
    """A fresh database of ``backend``; the PostgreSQL case is skipped (with the reason) when no server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'jobs.db'}"
    server = pg.server()
    if isinstance(server, str):
        pytest.skip(server)
    return server.create_database()


def settings_for(db_url: str, tmp_path: Path, tiny_model_dir: Path, **kw):
    from tunesmith.jobs.settings import JobsSettings
    return JobsSettings(db_url=db_url, files_dir=tmp_path / "files", template=TEMPLATE,
                        models={"tiny": str(tiny_model_dir)}, **kw)


def wait_for(check, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def upload(client, rows_or_bytes, *, purpose: str = "fine-tune", filename: str = "train.jsonl"):
    body = rows_or_bytes if isinstance(rows_or_bytes, bytes) else jsonl(rows_or_bytes)
    return client.post("/v1/files", files={"file": (filename, body, "application/jsonl")},
                       data={"purpose": purpose})


def events(client, job_id: str) -> list[dict]:
    """All events of a job, oldest first (the API pages them newest first)."""
    out, after = [], None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params).json()
        out += page["data"]
        if not page["has_more"]:
            return out[::-1]
        after = page["data"][-1]["id"]


def router_client(ctx):
    """A TestClient over an app with only the files and jobs routers (a context manager)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tunesmith.jobs.api import jobs_router
    from tunesmith.jobs.files import files_router
    app = FastAPI()
    app.include_router(files_router(ctx))
    app.include_router(jobs_router(ctx))
    return TestClient(app)
