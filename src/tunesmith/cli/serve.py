"""`tunesmith serve` and `tunesmith worker`.

The server's flags are generated from the ``ServeSettings`` fields (name, type, default and help from the
field's description), as llama-cpp-python's ``add_args_from_model`` does, so a setting is declared once.
Only the options that are not server settings (logging, the jobs API) are written out here.
"""
import inspect
import logging
import signal
import types
import typing
from pathlib import Path
from typing import List, Optional

import typer

from ..serve.settings import ServeSettings

FLAG_NAMES = {"model": ("--model", "-m"), "runs": ("--runs", "-r"), "api_keys": ("--api-key",)}
HELP_SUFFIX = {"api_keys": "Default: $TUNESMITH_API_KEYS (comma-separated)."}


def _cli_type(annotation) -> tuple[type, str]:
    """The typer type for a settings annotation, and a note for the help (the choices of a Literal)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _cli_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return str, f"One of: {', '.join(map(str, args))}."
    if typing.get_origin(annotation) is list and len(args) == 1 and args[0] in (str, int, float, Path):
        return List[args[0]], "Repeatable."
    if annotation in (str, int, float, bool, Path):
        return annotation, ""
    raise TypeError(f"ServeSettings field of type {annotation!r} has no command-line form; extend cli/serve.py")


def settings_parameters(model=ServeSettings) -> list[inspect.Parameter]:
    """One keyword parameter with a ``typer.Option`` per settings field (the add_args_from_model shape)."""
    params = []
    for name, field in model.model_fields.items():
        kind, note = _cli_type(field.annotation)
        flag = name.replace("_", "-")
        decls = FLAG_NAMES.get(name) or ((f"--{flag}/--no-{flag}",) if kind is bool else (f"--{flag}",))
        factory = field.default_factory is not None
        text = " ".join(t for t in (field.description or "", note, HELP_SUFFIX.get(name, "")) if t)
        option = typer.Option(None if factory else field.default, *decls, help=text, show_default=not factory)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=kind if kind is bool else Optional[kind]))
    return params


def _server_options(
        log_level: str = typer.Option("info", help="uvicorn log level."),
        jobs_db: Optional[str] = typer.Option(
            None, "--jobs-db", help="Enable /v1/files and /v1/fine_tuning/jobs on this database "
                                    "(sqlite:///path/jobs.db or postgresql+psycopg://...)."),
        jobs_runs: Path = typer.Option(Path("runs/jobs"), "--jobs-runs",
                                       help="Where fine-tuning jobs create run directories."),
        jobs_template: Optional[Path] = typer.Option(None, "--jobs-template",
                                                     help="Recipe YAML of defaults for every job."),
        jobs_worker: bool = typer.Option(True, "--jobs-worker/--no-jobs-worker",
                                         help="Train jobs in this process (else run `tunesmith worker`)."),
        max_upload_mb: float = typer.Option(512, "--max-upload-mb", help="Largest accepted upload (MB).")):
    """The options of `tunesmith serve` that are not ``ServeSettings`` fields (signature only)."""


SERVER_OPTIONS = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                  for p in inspect.signature(_server_options, eval_str=True).parameters.values()]


def serve(**values):
    """Serve the base model and every fine-tuned run with an OpenAI-compatible API.

    Routes: /v1/chat/completions, /v1/completions, /v1/models, plus /health and /metrics (and the
    Files and Fine-tuning Jobs API with --jobs-db)."""
    from ..errors import TunesmithError
    from ..serve.settings import settings_from
    opts = {p.name: values.pop(p.name) for p in SERVER_OPTIONS}
    settings = settings_from(**values)
    for root in settings.runs:
        if not root.exists():
            raise TunesmithError("runs folder not found; expected a folder of run directories or a run directory",
                                 file=str(root), field="--runs")
    if not settings.model.endswith(".gguf"):
        from .. import models
        models.resolve(settings.model)          # fail early on an unknown base model
    import uvicorn

    from ..serve import create_app
    parts = None
    if opts["jobs_db"]:
        from ..jobs.app import parts_for_server
        parts = parts_for_server(opts["jobs_db"], base_id=settings.base_id, base_model=settings.model,
                                 runs_dir=opts["jobs_runs"], worker=opts["jobs_worker"],
                                 template=str(opts["jobs_template"]) if opts["jobs_template"] else None,
                                 max_upload_mb=opts["max_upload_mb"])
    app = create_app(settings, sources=parts.sources if parts else (), routers=parts.routers if parts else (),
                     lifespans=[parts.worker_running] if parts else ())
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no authentication"
    jobs = f", fine-tuning jobs in {opts['jobs_db']}" if opts["jobs_db"] else ""
    typer.echo(f"tunesmith serve: {settings.base_id} + runs from {[str(r) for r in settings.runs] or 'none'}"
               f"{jobs} on http://{settings.host}:{settings.port}/v1 ({auth})", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=opts["log_level"])


serve.__signature__ = inspect.Signature([*settings_parameters(), *SERVER_OPTIONS])


def worker(db: Optional[str] = typer.Option(
               None, "--db", help="Jobs database URL: sqlite:///path/jobs.db (default under $TUNESMITH_HOME) or "
                                  "postgresql+psycopg://user@host/dbname."),
           runs: Path = typer.Option(Path("runs"), "--runs", help="Folder where job run directories are created."),
           poll: float = typer.Option(1.0, "--poll", help="Seconds between looks for work when idle."),
           heartbeat: float = typer.Option(5.0, "--heartbeat", help="Seconds between liveness updates of a running job."),
           stale_after: float = typer.Option(60.0, "--stale-after",
                                             help="Take over running jobs whose worker has been silent this long."),
           event_every: int = typer.Option(1, "--event-every", min=1, help="A metrics event every N steps."),
           once: bool = typer.Option(False, "--once", help="Work until no job is left, then exit.")):
    """Train queued fine-tuning jobs from the jobs database (run several for parallel jobs)."""
    from ..jobs.settings import default_db_url
    from ..jobs.worker import Worker, WorkerConfig
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    w = Worker(WorkerConfig(db_url=db or default_db_url(), runs_dir=runs, poll_s=poll, heartbeat_s=heartbeat,
                            stale_s=stale_after, event_every=event_every))

    def graceful(signum, _frame):
        logging.getLogger("tunesmith.jobs.worker").info("signal %s: stopping (a running job is requeued)", signum)
        w.stop()
    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    if once:
        rounds = w.run_until_idle()
        typer.echo(f"worker {w.id}: idle after {rounds} round(s) with work")
    else:
        w.run_forever()


serve_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
serve_app.command("serve")(serve)
worker_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
worker_app.command("worker")(worker)
