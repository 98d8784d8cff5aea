"""`tunesmith ui`: the web dashboard on a runs folder (``tunesmith serve --runs DIR``), opened in the browser."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import List, Optional

import typer

BROWSER_WAIT_S = 120.0       # how long to wait for the server to listen before giving up on the browser


def _when_listening(host: str, port: int, then, timeout: float = BROWSER_WAIT_S) -> threading.Thread:
    """Call ``then()`` in a daemon thread once ``host:port`` accepts connections (or never, after ``timeout``)."""
    def wait():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    break
            except OSError:
                time.sleep(0.25)
        else:
            return
        then()
    t = threading.Thread(target=wait, name="tunesmith-ui-browser", daemon=True)
    t.start()
    return t


def serve_values(**overrides) -> dict:
    """Keyword arguments for ``tunesmith.cli.serve.serve``: every option's default, then ``overrides``."""
    from . import serve as serve_cli
    values = {}
    for p in [*serve_cli.settings_parameters(), *serve_cli.SERVER_OPTIONS]:
        default = p.default
        values[p.name] = getattr(default, "default", default)
        if values[p.name] is ...:
            values[p.name] = None
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"not options of `tunesmith serve`: {sorted(unknown)}")
    values.update(overrides)
    return values


def ui(runs: Path = typer.Option(Path("runs"), "--runs", "-r", help="Folder of run directories to show."),
       model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                                 help="Base model the server also serves (catalogue name, HF folder or .gguf)."),
       host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
       port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port to listen on."),
       api_key: Optional[List[str]] = typer.Option(None, "--api-key",
                                                   help="Accepted API keys (sign-in). Default: $TUNESMITH_API_KEYS."),
       jobs_db: Optional[str] = typer.Option(None, "--jobs-db",
                                             help="Also show (and stop/resume) the fine-tuning jobs of this database."),
       browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the dashboard in the web browser.")):
    """Open the web dashboard on a runs folder: `tunesmith serve --runs DIR` plus the browser at /ui."""
    from . import serve as serve_cli
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{shown}:{port}/ui/"
    if browser:
        import webbrowser
        _when_listening(shown, port, lambda: webbrowser.open(url))
    typer.echo(f"tunesmith ui: dashboard on {url} (Ctrl-C stops it)", err=True)
    serve_cli.serve(**serve_values(runs=[runs], model=model, host=host, port=port, api_keys=api_key or None,
                                   jobs_db=jobs_db, ui=True))
