"""A standalone FastAPI app with the files and jobs routers (and, optionally, an in-process worker)."""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .api import jobs_router
from .files import files_router
from .recipe import check_template
from .settings import JobsContext, JobsSettings
from .worker import WorkerConfig, WorkerThread


def create_app(settings: JobsSettings, *, worker: WorkerConfig | None = None, dependencies=()) -> FastAPI:
    """`/v1/files` + `/v1/fine_tuning/jobs`; with ``worker`` a worker thread runs while the app does."""
    check_template(settings.job_template())
    ctx = JobsContext(settings)

    @asynccontextmanager
    async def lifespan(_app):
        thread = WorkerThread(worker, ctx.db).start() if worker else None
        try:
            yield
        finally:
            if thread:
                thread.stop()

    app = FastAPI(title="tunesmith fine-tuning jobs", lifespan=lifespan)
    app.state.jobs = ctx
    app.include_router(files_router(ctx, dependencies=dependencies))
    app.include_router(jobs_router(ctx, dependencies=dependencies))
    return app
