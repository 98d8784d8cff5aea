"""The web dashboard served by `tunesmith serve` at ``/ui`` (``/`` redirects there): runs, a run's live
curves, report and files, compare, job actions. Server-rendered Jinja2 pages with plain JS and a vendored
uPlot (``static/vendor``); no Node build step, no CDN. Turned off with ``--no-ui`` (``ServeSettings.ui``).

It is a sub-application mounted at ``/ui``: its routes are ``app.routes``' ``/ui`` mount's ``routes``."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from .routes import HOME, PREFIX, dashboard_app
from .security import Guard

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI, settings) -> FastAPI:
    """Mount the dashboard on ``app`` at ``/ui`` (with ``/ui/static``) and redirect ``/`` there; returns it."""
    guard = Guard(settings.api_keys)
    sub = dashboard_app(settings, guard, app)
    sub.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.mount(PREFIX, sub, name="dashboard")

    @app.get("/", include_in_schema=False)
    async def _home():
        return RedirectResponse(HOME, status_code=303)
    return sub


__all__ = ["HOME", "PREFIX", "mount"]
