"""Self-hosted OpenAI-compatible Files + Fine-tuning Jobs API, stored with SQLAlchemy, run by a worker.

Routers: ``files_router(ctx)`` (`/v1/files`) and ``jobs_router(ctx)`` (`/v1/fine_tuning/jobs`) over a
``JobsContext(JobsSettings(...))``; ``Worker``/``WorkerThread`` train queued jobs with
``tunesmith.pipeline.run``; ``JobsModelSource`` lists succeeded jobs' fine-tuned models for serving; ``parts_for_server`` /
``JobsParts`` bundle routers, source and an in-process worker for `tunesmith serve`.
"""
from __future__ import annotations

__all__ = ["JobsSettings", "JobsContext", "files_router", "jobs_router", "Worker", "WorkerConfig",
           "WorkerThread", "JobsModelSource", "JobsParts", "parts_for_server", "create_app"]

_WHERE = {"JobsSettings": "settings", "JobsContext": "settings", "files_router": "files", "jobs_router": "api",
          "Worker": "worker", "WorkerConfig": "worker", "WorkerThread": "worker", "JobsModelSource": "source",
          "JobsParts": "app", "parts_for_server": "app", "create_app": "app"}


def __getattr__(name):   # lazy: importing the package does not import FastAPI or SQLAlchemy
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
