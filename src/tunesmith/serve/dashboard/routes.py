"""The dashboard's routes under ``/ui``: runs list, run page (live metrics over SSE), report, files, compare,
job actions (forwarded to the fine-tuning jobs API), sign-in."""
from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from pathlib import Path

from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.routing import NoMatchFound

from ...errors import TunesmithError
from ...rundir import Layout
from ...runs import best_index, compare_runs, training_stats
from . import data, tool_routes
from .security import (KEY_COOKIE, LOGIN_PATH, SESSION_COOKIE, Guard, LoginRequired, Refused, new_session,
                       set_cookie)

PREFIX = "/ui"
HOME = PREFIX + "/"            # the runs page
JOBS_PATH = "/v1/fine_tuning/jobs"
JOB_ACTIONS = ("cancel", "pause", "resume")
JOB_ID = re.compile(r"^ftjob-[A-Za-z0-9]{1,64}$")
TEMPLATES = Path(__file__).parent / "templates"
# pages load scripts and styles from /ui/static only; the embedded report is sandboxed separately
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "frame-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'")
REPORT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
STREAM_POLL_S = 0.5
STREAM_KEEPALIVE_S = 15.0


def _fmt_duration(seconds) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return ""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _fmt_num(v) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _finite(value):
    """NaN and infinities as null (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _cursor(last_event_id: str, offset: int) -> tuple[int | None, int]:
    """Where a metrics stream resumes: (file version or None, byte offset) from a ``VERSION-OFFSET`` or bare
    ``OFFSET`` Last-Event-ID; anything else starts at ``offset`` with no version."""
    version, _, pos = last_event_id.rpartition("-")
    if pos.isdigit() and (version.isdigit() or version == ""):
        return (int(version) if version else None), int(pos)
    return None, offset


def _next_url(value: str | None) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return HOME


def dashboard_app(settings, guard: Guard, parent: FastAPI) -> FastAPI:
    """The dashboard for a server with ``settings`` (runs roots, API keys), to be mounted at ``PREFIX`` of
    ``parent`` (whose API it calls in-process for the fine-tuning jobs)."""
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals["best"] = best_index
    templates.env.filters.update(duration=_fmt_duration, num=_fmt_num, size=data.human_size)
    roots = [Path(r) for r in settings.runs]

    def warm() -> None:
        """Compile the runs templates and fill the run-row cache in the background, so the first visit to a
        folder of hundreds of runs does not read every recipe while the user waits (best effort: a
        request meanwhile simply computes what it needs itself)."""
        try:
            for name in ("runs.html", "rows.html"):
                templates.env.get_template(name)
            data.run_rows(data.discover(roots))
        except (OSError, TunesmithError):
            pass
    threading.Thread(target=warm, name="tunesmith-dashboard-warm", daemon=True).start()
    sub = FastAPI(title="tunesmith dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    sub.add_exception_handler(LoginRequired, _login_required)
    sub.add_exception_handler(Refused, _refused)

    def jobs_on(request: Request | None = None) -> bool:
        """Whether the parent server has the fine-tuning jobs API (``--jobs-db``)."""
        try:
            return parent.url_path_for("list_jobs") == JOBS_PATH
        except NoMatchFound:
            return False

    def render(request: Request, name: str, ctx: dict, status: int = 200) -> HTMLResponse:
        session = request.cookies.get(SESSION_COOKIE) or new_session()
        ctx = {"csrf": guard.token_for(session), "auth": guard.enabled, "signed_in": guard.signed_in(request),
               "jobs_on": jobs_on(request), **ctx}
        resp = templates.TemplateResponse(request, name, ctx, status_code=status)
        if session != request.cookies.get(SESSION_COOKIE):
            set_cookie(resp, request, SESSION_COOKIE, session)
        resp.headers["Content-Security-Policy"] = PAGE_CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def error_page(request: Request, status: int, message: str) -> HTMLResponse:
        return render(request, "error.html", {"title": "error", "status": status, "message": message}, status)

    async def api(request: Request, method: str, path: str, *, json_body=None, raw: bool = False,
                  **params) -> tuple[int, dict]:
        """Call this server's own API in-process with the signed-in key (every button is an API call);
        ``raw``: the body as bytes under ``"content"`` when the call succeeded."""
        import httpx
        key = guard.api_key(request)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=parent)
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard.local") as client:
            r = await client.request(method, path, headers=headers, params=params or None, json=json_body)
        if raw and r.status_code == 200:
            return r.status_code, {"content": r.content}
        try:
            body = r.json()
        except ValueError:
            body = {"error": {"message": r.text[:500]}}
        return r.status_code, body if isinstance(body, dict) else {"data": body}

    def refs() -> dict[str, data.RunRef]:
        return data.discover(roots)

    def find(rid: str) -> data.RunRef | None:
        return refs().get(rid)

    # ---- sign-in -------------------------------------------------------------------------------------

    @sub.get("/login")
    async def login_page(request: Request, next: str | None = None):
        if not guard.enabled:
            return RedirectResponse(HOME, status_code=303)
        return render(request, "login.html", {"title": "sign in", "next": _next_url(next), "error": None})

    @sub.post("/login")
    async def login(request: Request):
        await guard.check_csrf(request)
        form = await request.form()
        key, nxt = form.get("key"), _next_url(form.get("next") if isinstance(form.get("next"), str) else None)
        if not guard.enabled:
            return RedirectResponse(HOME, status_code=303)
        if not isinstance(key, str) or not guard.key_ok(key.strip()):
            return render(request, "login.html", {"title": "sign in", "next": nxt,
                                                  "error": "That is not one of this server's API keys."}, 401)
        resp = RedirectResponse(nxt, status_code=303)
        set_cookie(resp, request, KEY_COOKIE, key.strip())
        set_cookie(resp, request, SESSION_COOKIE, new_session())      # a fresh session (and CSRF token)
        return resp

    @sub.post("/logout")
    async def logout(request: Request):
        await guard.action(request)
        resp = RedirectResponse(LOGIN_PATH if guard.enabled else HOME, status_code=303)
        resp.delete_cookie(KEY_COOKIE, path="/")
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # ---- runs list -------------------------------------------------------------------------------------

    async def jobs_list(request: Request) -> tuple[list[dict], str | None]:
        if not jobs_on(request):
            return [], None
        status, body = await api(request, "GET", JOBS_PATH, limit=100)
        if status != 200:
            return [], (body.get("error") or {}).get("message", f"HTTP {status}")
        return body.get("data") or [], None

    async def list_context(request: Request) -> dict:
        found = refs()
        rows = await run_in_threadpool(data.run_rows, found)
        jobs, jobs_error = await jobs_list(request)
        links = data.job_run_ids(found)
        for job in jobs:
            job["run_id"] = links.get(job.get("id"))
        return {"rows": rows, "jobs": jobs, "jobs_error": jobs_error, "roots": [str(r) for r in roots]}

    @sub.get("/")
    async def runs_page(request: Request):
        guard.page(request)
        return render(request, "runs.html", {"title": "runs", **await list_context(request)})

    @sub.get("/runs/rows")
    async def runs_rows(request: Request):
        """The runs and jobs tables' bodies (the runs page refreshes them: new runs appear by themselves)."""
        guard.data(request)
        return render(request, "rows.html", await list_context(request))

    # ---- one run -------------------------------------------------------------------------------------------

    async def job_of(request: Request, ref: data.RunRef) -> dict | None:
        if not jobs_on(request):
            return None
        m = re.match(r"^(ftjob-[A-Za-z0-9]+)-\d+$", ref.path.name)
        if not m:
            return None
        status, body = await api(request, "GET", f"{JOBS_PATH}/{m.group(1)}")
        return body if status == 200 else None

    def run_context(ref: data.RunRef) -> dict:
        layout = Layout(ref.path)
        recipe = data.recipe_dict(ref.path)
        try:
            recipe_text = layout.recipe_path.read_text(encoding="utf-8")
        except OSError:
            recipe_text = ""
        files, more = data.artifacts(ref.path)
        return {"row": data.run_row(ref), "recipe_text": recipe_text, "planned": data.planned_steps(ref.path, recipe),
                "training": training_stats(ref.path), "files": files, "more_files": more,
                "has_report": layout.report_html.is_file()}

    @sub.get("/run/{rid}")
    async def run_page(request: Request, rid: str):
        guard.page(request)
        ref = find(rid)
        if ref is None:
            return error_page(request, 404, f"no run {rid!r} under the server's runs folders")
        ctx = await run_in_threadpool(run_context, ref)
        ctx["job"] = await job_of(request, ref)
        return render(request, "run.html", {"title": ref.path.name, "rid": rid, **ctx})

    @sub.get("/run/{rid}/stream")
    async def run_stream(request: Request, rid: str, offset: int = Query(0, ge=0),
                         max_s: float = Query(60.0, gt=0, le=3600)):
        """Server-sent events: the run's metrics.jsonl records (``records`` events, a JSON list; the event id
        is ``VERSION-OFFSET``, the file's version and the byte offset to continue from), new ones as they are
        appended; ``reset`` when the file was rewritten. The stream ends after ``max_s`` seconds; EventSource
        reconnects with Last-Event-ID (a bare offset is accepted too)."""
        guard.data(request)
        ref = find(rid)
        if ref is None:
            raise Refused(404, f"no run {rid!r}")
        version, start = _cursor(request.headers.get("last-event-id", ""), offset)
        path = Layout(ref.path).metrics_path

        async def events():
            pos, ver, t0 = start, version, time.monotonic()
            sent = t0
            yield "retry: 1000\n\n"
            while True:
                records, new_pos, new_ver, reset = await run_in_threadpool(data.read_new, path, pos, ver)
                now = time.monotonic()
                if reset:
                    yield "event: reset\ndata: {}\n\n"
                if records or reset or new_pos != pos or new_ver != ver:
                    payload = json.dumps(_finite(records), separators=(",", ":"))
                    yield f"id: {'' if new_ver is None else new_ver}-{new_pos}\nevent: records\ndata: {payload}\n\n"
                    pos, ver, sent = new_pos, new_ver, now
                elif now - sent > STREAM_KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    sent = now
                if now - t0 > max_s or await request.is_disconnected():
                    return
                await asyncio.sleep(STREAM_POLL_S)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @sub.get("/run/{rid}/report")
    async def run_report(request: Request, rid: str):
        guard.data(request)
        ref = find(rid)
        report = Layout(ref.path).report_html if ref else None
        if report is None or not report.is_file():
            raise Refused(404, "this run has no report.html yet (run `tunesmith eval`)")
        return FileResponse(report, media_type="text/html",
                            headers={"Content-Security-Policy": REPORT_CSP, "X-Frame-Options": "SAMEORIGIN",
                                     "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})

    @sub.get("/run/{rid}/files/{rel:path}")
    async def run_file(request: Request, rid: str, rel: str):
        guard.data(request)
        ref = find(rid)
        target = data.safe_file(ref.path, rel) if ref else None
        if target is None:
            raise Refused(404, "no such file in this run")
        return FileResponse(target, filename=target.name, content_disposition_type="attachment",
                            headers={"X-Content-Type-Options": "nosniff"})

    # ---- compare -----------------------------------------------------------------------------------------

    @sub.get("/compare")
    async def compare_page(request: Request, run: list[str] = Query([])):
        guard.page(request)
        found = refs()
        missing = [r for r in run if r not in found]
        if missing:
            return error_page(request, 404, f"no run {missing[0]!r} under the server's runs folders")
        if len(run) < 2:
            return error_page(request, 400, "pick two or more runs to compare (tick them in the runs list)")
        paths = [found[r].path for r in run]
        try:
            result = await run_in_threadpool(compare_runs, paths)
        except TunesmithError as e:
            return error_page(request, 400, str(e))
        curves = await run_in_threadpool(lambda: [data.curves(p) for p in paths])
        series = [{"name": r["name"], **c} for r, c in zip(result["runs"], curves)]
        return render(request, "compare.html", {"title": "compare", "result": result, "ids": run, "series": series})

    # ---- job actions ---------------------------------------------------------------------------------------

    @sub.post("/jobs/{job_id}/{action}")
    async def job_action(request: Request, job_id: str, action: str):
        """Cancel, pause or resume a fine-tuning job through the jobs API (key and CSRF checked first)."""
        await guard.action(request)
        if action not in JOB_ACTIONS or not JOB_ID.match(job_id):
            raise Refused(404, f"unknown job action {action!r}; expected one of {', '.join(JOB_ACTIONS)}")
        if not jobs_on(request):
            raise Refused(404, "this server has no fine-tuning jobs API (start it with --jobs-db)")
        status, body = await api(request, "POST", f"{JOBS_PATH}/{job_id}/{action}")
        return JSONResponse(body, status_code=status)

    # ---- data, new job, playground (tool_routes.py) -----------------------------------------------------------
    tool_routes.register(sub, tool_routes.Page(settings=settings, guard=guard, parent=parent, render=render,
                                               error_page=error_page, api=api, jobs_on=jobs_on, refs=refs))
    return sub


async def _login_required(request: Request, exc: LoginRequired):
    return RedirectResponse(f"{LOGIN_PATH}?next={quote(exc.next_url, safe='')}", status_code=303)


async def _refused(request: Request, exc: Refused):
    return JSONResponse({"error": {"message": exc.message, "type": "invalid_request_error",
                                   "code": "unauthorized" if exc.status == 401 else None, "param": None}},
                        status_code=exc.status)
