"""Wiring: the jobs routers, model source and optional in-process worker, for `tunesmith serve` or alone."""
from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .api import jobs_router
from .errors import envelope
from .files import files_router
from .recipe import check_template
from .settings import JobsContext, JobsSettings, load_template
from .worker import WorkerConfig, WorkerThread


class JobsParts:
    """Everything an inference server needs to offer fine-tuning: ``routers`` (`/v1/files`,
    `/v1/fine_tuning/jobs`), ``sources`` (succeeded jobs' models) and, with ``worker``, a worker
    thread started by ``worker_running()``. The template is checked at once (bad template: TunesmithError)."""

    def __init__(self, settings: JobsSettings, *, worker: WorkerConfig | None = None, dependencies=()):
        from .source import JobsModelSource
        check_template(settings.job_template())
        self.ctx = JobsContext(settings)
        self.routers = [files_router(self.ctx, dependencies=dependencies),
                        jobs_router(self.ctx, dependencies=dependencies)]
        self.sources = [JobsModelSource(self.ctx.db)]
        self.worker = worker
        self._thread: WorkerThread | None = None

    def start_worker(self) -> None:
        if self.worker is not None and self._thread is None:
            self._thread = WorkerThread(self.worker, self.ctx.db).start()

    def stop_worker(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    @contextmanager
    def worker_running(self):
        self.start_worker()
        try:
            yield self
        finally:
            self.stop_worker()


def parts_for_server(db_url: str, *, base_id: str, base_model: str, runs_dir, template=None, files_dir=None,
                     worker: bool = True, max_upload_mb: float = 512, organization: str = "tunesmith",
                     poll_s: float = 1.0) -> JobsParts:
    """The jobs API for an inference server serving ``base_model`` as ``base_id``: clients fine-tune
    that model by its API id; ``template`` is a recipe YAML path or dict of job defaults; with
    ``worker`` a worker thread trains jobs into ``runs_dir`` (start it with ``worker_running()``)."""
    settings = JobsSettings(db_url=db_url, files_dir=files_dir, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                            organization=organization, template=load_template(template),
                            models={base_id: base_model})
    return JobsParts(settings, worker=WorkerConfig(db_url=db_url, runs_dir=runs_dir, poll_s=poll_s) if worker else None)


def create_app(settings: JobsSettings, *, worker: WorkerConfig | None = None, dependencies=(),
               max_body_mb: float = 8.0) -> FastAPI:
    """A standalone app with only the files and jobs endpoints (no inference); with ``worker`` a
    worker thread runs while the app does. Request bodies beyond ``max_body_mb`` get 413 (uploads keep
    their own, larger limit)."""
    from ..serve.limits import BodyLimitMiddleware
    parts = JobsParts(settings, worker=worker, dependencies=dependencies)

    @asynccontextmanager
    async def lifespan(_app):
        with parts.worker_running():
            yield

    app = FastAPI(title="tunesmith fine-tuning jobs", lifespan=lifespan)
    app.state.jobs = parts

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        return JSONResponse(envelope(f"The server had an error while processing your request: "
                                     f"{type(exc).__name__}", type="server_error"), status_code=500)

    for router in parts.routers:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_body_mb * 1024 * 1024))
    return app
