"""`tunesmith serve`: an OpenAI-compatible inference server for the base model and every fine-tuned run."""
from __future__ import annotations

from .settings import ServeSettings


def __getattr__(name):   # the registry (and torch with it) loads on first use: `serve --help` stays light
    if name in ("ModelSource", "RunsSource", "ServedModel"):
        from . import registry
        return getattr(registry, name)
    raise AttributeError(name)


def create_app(settings: ServeSettings, *, sources=(), routers=(), lifespans=()):
    """The FastAPI app (see ``tunesmith.serve.app.create_app``; imported on first use)."""
    from .app import create_app as _create
    return _create(settings, sources=sources, routers=routers, lifespans=lifespans)


__all__ = ["ModelSource", "RunsSource", "ServeSettings", "ServedModel", "create_app"]
