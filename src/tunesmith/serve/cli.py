"""The `serve` command (a typer function the main CLI registers as `tunesmith serve`)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import TunesmithError


def serve(model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                                    help="Base model: catalogue name, local HF folder or .gguf file."),
          runs: Optional[List[Path]] = typer.Option(None, "--runs", "-r",
                                                    help="Runs root (folder of run directories) or a run directory; repeatable."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(8000, help="Port to listen on."),
          api_key: Optional[List[str]] = typer.Option(None, "--api-key",
                                                      help="Accepted bearer key; repeatable (default: $TUNESMITH_API_KEYS; none = no auth)."),
          adapter_budget_mb: float = typer.Option(1024.0, help="Memory for loaded fine-tuned models (MB); LRU eviction beyond it."),
          max_batch_size: int = typer.Option(8, help="Most sequences generated together."),
          batch_wait_ms: float = typer.Option(10.0, help="How long a request waits for others to batch with (ms)."),
          device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
          default_max_tokens: int = typer.Option(256, help="Chat reply limit when a request sets none."),
          model_id: Optional[str] = typer.Option(None, help="Id of the base model in the API (default: --model)."),
          gguf: bool = typer.Option(True, help="Serve GGUF exports through llama-cpp-python when installed."),
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
    """Serve the base model and every fine-tuned run with an OpenAI-compatible API (/v1/chat/completions,
    /v1/completions, /v1/models), plus /health and /metrics."""
    import uvicorn

    from .settings import settings_from
    settings = settings_from(model=model, model_id=model_id, runs=list(runs or []), host=host, port=port,
                             api_keys=list(api_key) if api_key else None, adapter_budget_mb=adapter_budget_mb,
                             max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, device=device,
                             default_max_tokens=default_max_tokens, gguf=gguf)
    for root in settings.runs:
        if not root.exists():
            raise TunesmithError("runs folder not found; expected a folder of run directories or a run directory",
                                 file=str(root), field="--runs")
    if not settings.model.endswith(".gguf"):
        from .. import models
        models.resolve(settings.model)          # fail early on an unknown base model
    from . import create_app
    parts = None
    if jobs_db:
        from ..jobs.app import parts_for_server
        parts = parts_for_server(jobs_db, base_id=settings.base_id, base_model=settings.model, runs_dir=jobs_runs,
                                 template=str(jobs_template) if jobs_template else None, worker=jobs_worker,
                                 max_upload_mb=max_upload_mb)
    app = create_app(settings, sources=parts.sources if parts else (), routers=parts.routers if parts else (),
                     lifespans=[parts.worker_running] if parts else ())
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no authentication"
    jobs = f", fine-tuning jobs in {jobs_db}" if jobs_db else ""
    typer.echo(f"tunesmith serve: {settings.base_id} + runs from {[str(r) for r in settings.runs] or 'none'}"
               f"{jobs} on http://{settings.host}:{settings.port}/v1 ({auth})", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("serve")(serve)
