"""`tunesmith serve`: an OpenAI-compatible inference server for the base model and every fine-tuned run."""
from __future__ import annotations

from .registry import ModelSource, RunsSource, ServedModel
from .settings import ServeSettings


def create_app(settings: ServeSettings, *, sources=(), routers=(), lifespans=()):
    """The FastAPI app (see ``tunesmith.serve.app.create_app``; imported on first use)."""
    from .app import create_app as _create
    return _create(settings, sources=sources, routers=routers, lifespans=lifespans)


__all__ = ["ModelSource", "RunsSource", "ServeSettings", "ServedModel", "create_app"]
