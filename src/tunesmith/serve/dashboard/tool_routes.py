"""The dashboard's data page (upload or pick a file: validation report, first batch with trained tokens
marked), new-job page (form for the fine-tuning jobs API, pasted recipe check) and playground (chat and
side by side, streamed from the server's own /v1/chat/completions through a proxy that adds the key)."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from ...errors import TunesmithError
from ...rundir import Layout
from ..limits import BodyTooLarge, limited_request
from . import tools
from .security import Refused

FILES_PATH = "/v1/files"
JOBS_PATH = "/v1/fine_tuning/jobs"
CHAT_PATH = "/v1/chat/completions"
FILE_ID = re.compile(r"^file-[A-Za-z0-9]{1,64}$")


@dataclass
class Page:
    """What the routes need from the dashboard app (see ``routes.dashboard_app``)."""
    settings: Any
    guard: Any
    parent: FastAPI
    render: Callable
    error_page: Callable
    api: Callable
    jobs_on: Callable
    refs: Callable


def _scratch() -> Path:
    """A temporary folder owned by this dashboard (uploads being validated, pasted recipes); removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-dashboard-"))
    return folder


def register(sub: FastAPI, p: Page) -> None:
    scratch = _scratch()
    weakref.finalize(sub, shutil.rmtree, str(scratch), True)

    def form_text(form, name: str) -> str:
        value = form.get(name)
        return value.strip() if isinstance(value, str) else ""

    async def fine_tune_files(request: Request) -> list[dict]:
        if not p.jobs_on(request):
            return []
        status, body = await p.api(request, "GET", FILES_PATH, purpose="fine-tune")
        return body.get("data") or [] if status == 200 else []

    def recipe_runs() -> list[dict]:
        out = []
        for rid, ref in sorted(p.refs().items()):
            if Layout(ref.path).recipe_path.is_file():
                out.append({"id": rid, "name": ref.path.name})
        return out

    # ---- data ------------------------------------------------------------------------------------------------

    async def data_context(request: Request, **extra) -> dict:
        return {"title": "data", "files": await fine_tune_files(request), "runs": await run_in_threadpool(recipe_runs),
                "model": p.settings.model, "limit": tools.UPLOAD_MAX_BYTES, "result": None, "error": None,
                "shown_name": None, "chosen_run": "", **extra}

    @sub.get("/data")
    async def data_page(request: Request):
        p.guard.page(request)
        return p.render(request, "data.html", await data_context(request))

    @sub.post("/data")
    async def data_check(request: Request):
        """Validate an uploaded file (multipart ``file``, at most ``tools.UPLOAD_MAX_BYTES``) or a file of the
        jobs API (``file_id``) against the server's model or a run's recipe (``run``), in a worker thread."""
        request = limited_request(request, tools.UPLOAD_MAX_BYTES)
        try:
            await p.guard.action(request)
            form = await request.form()
        except BodyTooLarge:
            return p.error_page(request, 413, f"the data file is larger than the dashboard's upload limit "
                                              f"({tools.UPLOAD_MAX_BYTES:,} bytes)")
        upload, file_id, rid = form.get("file"), form_text(form, "file_id"), form_text(form, "run")
        run_recipe = None
        if rid:
            ref = p.refs().get(rid)
            if ref is None:
                return p.error_page(request, 404, f"no run {rid!r} under the server's runs folders")
            run_recipe = Layout(ref.path).recipe_path
        path, error, result, shown = None, None, None, None
        try:
            if getattr(upload, "filename", None):
                shown = Path(upload.filename).name
                path = tools.scratch_file(scratch, tools.data_suffix(shown))
                with open(path, "wb") as f:
                    await run_in_threadpool(shutil.copyfileobj, upload.file, f)
            elif file_id:
                if not FILE_ID.match(file_id) or not p.jobs_on(request):
                    raise TunesmithError(f"no such file {file_id!r} in the jobs API")
                status, meta = await p.api(request, "GET", f"{FILES_PATH}/{file_id}")
                if status != 200:
                    raise TunesmithError((meta.get("error") or {}).get("message", f"HTTP {status}"))
                shown = meta.get("filename") or file_id
                status, got = await p.api(request, "GET", f"{FILES_PATH}/{file_id}/content", raw=True)
                if status != 200:
                    raise TunesmithError((got.get("error") or {}).get("message", f"HTTP {status}"))
                path = tools.scratch_file(scratch, tools.data_suffix(shown))
                path.write_bytes(got["content"])
            else:
                raise TunesmithError("choose a data file to upload or one of the uploaded files")
            result = await run_in_threadpool(tools.check_data, path, p.settings.model, run_recipe)
        except (TunesmithError, OSError, ValueError) as e:
            error = tools.one_line(e).replace(str(path), shown or "the file") if path else tools.one_line(e)
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        ctx = await data_context(request, result=result, error=error, shown_name=shown, chosen_run=rid)
        return p.render(request, "data.html", ctx, 400 if error else 200)

    # ---- new job -------------------------------------------------------------------------------------------

    async def job_context(request: Request, **extra) -> dict:
        return {"title": "new job", "fields": tools.job_fields(), "files": await fine_tune_files(request),
                "values": {}, "job_error": None, "created": None, "recipe_text": "",
                "recipe_error": None, "resolved": None, **extra}

    @sub.get("/new")
    async def new_job_page(request: Request):
        p.guard.page(request)
        return p.render(request, "new.html", await job_context(request))

    @sub.post("/new")
    async def new_job(request: Request):
        """Create a fine-tuning job through the jobs API; its error message is shown on the form."""
        await p.guard.action(request)
        form = await request.form()
        values = {f["name"]: form_text(form, f["name"]) for f in tools.job_fields()}
        if not p.jobs_on(request):
            ctx = await job_context(request, values=values,
                                    job_error="this server has no fine-tuning jobs API (start it with --jobs-db)")
            return p.render(request, "new.html", ctx, 400)
        status, body = await p.api(request, "POST", JOBS_PATH, json_body=tools.job_body(values))
        if status != 200:
            message = (body.get("error") or {}).get("message") or f"HTTP {status}"
            return p.render(request, "new.html", await job_context(request, values=values, job_error=message),
                            status if 400 <= status < 500 else 400)
        return p.render(request, "new.html", await job_context(request, created=body))

    @sub.post("/recipe/check")
    async def recipe_check(request: Request):
        """Validate a pasted recipe (the CLI's checks); the jobs API takes no recipe, so it is not submitted."""
        await p.guard.action(request)
        form = await request.form()
        text = form.get("recipe") if isinstance(form.get("recipe"), str) else ""
        try:
            resolved, error = await run_in_threadpool(tools.check_recipe, text, scratch), None
        except (TunesmithError, OSError, ValueError) as e:
            resolved, error = None, tools.one_line(e)
        ctx = await job_context(request, recipe_text=text, recipe_error=error, resolved=resolved)
        return p.render(request, "new.html", ctx, 400 if error else 200)

    # ---- playground ----------------------------------------------------------------------------------------

    @sub.get("/playground")
    async def playground_page(request: Request):
        p.guard.page(request)
        status, body = await p.api(request, "GET", "/v1/models")
        models = [m.get("id") for m in body.get("data") or []] if status == 200 else []
        error = None if status == 200 else (body.get("error") or {}).get("message", f"HTTP {status}")
        base = p.settings.base_id
        return p.render(request, "playground.html", {"title": "playground", "models": models, "base": base,
                                                     "tuned": [m for m in models if m != base], "error": error})

    @sub.post("/playground/chat")
    async def playground_chat(request: Request):
        """The server's own chat completions (streamed when asked), called with the signed-in key added here:
        the page's script never sees the key (its cookie is HttpOnly)."""
        await p.guard.action(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            raise Refused(400, "expected a JSON chat completions request")
        if not isinstance(body, dict):
            raise Refused(400, "expected a JSON chat completions request")
        return await _forward(p, request, CHAT_PATH, json.dumps(body).encode())


async def _forward(p: Page, request: Request, path: str, body: bytes):
    """POST ``body`` to the parent app's ``path`` in-process, streaming its answer back as it comes."""
    key = p.guard.api_key(request)
    headers = [(b"host", b"dashboard.local"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 0),
             "server": ("dashboard.local", 80)}
    queue: asyncio.Queue = asyncio.Queue()
    done = asyncio.Event()
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        await queue.put(message)

    task = asyncio.create_task(p.parent(scope, receive, send))
    task.add_done_callback(lambda t: queue.put_nowait(None))
    first = await queue.get()
    if first is None or first.get("type") != "http.response.start":
        done.set()
        error = task.exception() if task.done() and not task.cancelled() else None
        return JSONResponse({"error": {"message": f"the server did not answer ({error})", "type": "server_error"}},
                            status_code=502)
    answer_headers = {k.decode().lower(): v.decode() for k, v in first.get("headers", [])}

    async def chunks():
        try:
            while True:
                message = await queue.get()
                if message is None:
                    return
                if message.get("type") == "http.response.body":
                    if message.get("body"):
                        yield message["body"]
                    if not message.get("more_body"):
                        return
        finally:
            done.set()
            if not task.done():
                task.cancel()

    return StreamingResponse(chunks(), status_code=first["status"],
                             media_type=answer_headers.get("content-type", "application/json"),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
