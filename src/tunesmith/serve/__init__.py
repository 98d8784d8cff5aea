"""`tunesmith serve`: an OpenAI-compatible inference server for the base model and every fine-tuned run."""
from __future__ import annotations

from .registry import ModelSource, RunsSource, ServedModel
from .settings import ServeSettings


def create_app(settings: ServeSettings, *, sources=(), routers=()):
    """The FastAPI app (imported lazily: FastAPI and torch load only when a server is built)."""
    from .app import create_app as _create
    return _create(settings, sources=sources, routers=routers)


__all__ = ["ModelSource", "RunsSource", "ServeSettings", "ServedModel", "create_app"]
