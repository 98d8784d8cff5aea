"""`tunesmith worker`: the jobs worker as a typer command (also `python -m tunesmith.jobs.cli`)."""
from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Optional

import typer


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
    from .settings import default_db_url
    from .worker import Worker, WorkerConfig
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    w = Worker(WorkerConfig(db_url=db or default_db_url(), runs_dir=runs, poll_s=poll, heartbeat_s=heartbeat,
                            stale_s=stale_after, event_every=event_every))

    def _graceful(signum, _frame):
        logging.getLogger("tunesmith.jobs.worker").info("signal %s: stopping (a running job is requeued)", signum)
        w.stop()
    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    if once:
        rounds = w.run_until_idle()
        typer.echo(f"worker {w.id}: idle after {rounds} round(s) with work")
    else:
        w.run_forever()


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(worker)

if __name__ == "__main__":
    app()
