"""The jobs worker: claims queued jobs atomically, runs them through tunesmith's pipeline, streams progress."""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select, update

from ..errors import TunesmithError
from ..fsutil import atomic_write_text, sha256_file
from ..rundir import Layout, Run, is_run_dir
from .api import fine_tuned_name
from .db import (CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, SUCCEEDED, VALIDATING, CheckpointRow, Database,
                 FileRow, JobRow, add_event, new_id, now, transition)
from .recipe import run_recipe

log = logging.getLogger("tunesmith.jobs.worker")
_ACTIVE = (RUNNING, PAUSED, QUEUED)    # statuses a held job can have while its worker trains it


@dataclass
class WorkerConfig:
    db_url: str
    runs_dir: str | Path = "runs"
    poll_s: float = 1.0          # sleep between looks for work when idle
    heartbeat_s: float = 5.0     # how often a busy worker says it is alive
    stale_s: float = 60.0        # a held job whose heartbeat is older than this is taken over
    event_every: int = 1         # a metrics event every N optimizer steps
    worker_id: str | None = None


class _Stop(Exception):
    """Ends a training run from a step callback: cancelled, paused, shutdown or lost."""

    def __init__(self, reason: str, step: int):
        super().__init__(f"{reason} at step {step}")
        self.reason, self.step = reason, step


def _dead_here(owner: str) -> bool:
    """Whether ``owner`` (``host:pid:tag``) is a worker process on this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Worker:
    """Takes jobs from the database and trains them; several workers may share one database."""

    def __init__(self, cfg: WorkerConfig, db: Database | None = None):
        self.cfg = cfg
        self.db = db or Database(cfg.db_url)
        self.id = cfg.worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id('', 6)}"
        self.runs_dir = Path(cfg.runs_dir).expanduser().resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask the worker to stop: an idle loop ends, a running job is requeued at its next step."""
        self.stopping.set()

    # ---- housekeeping ------------------------------------------------------------------------

    def recover_stale(self) -> list[str]:
        """Release jobs held by dead workers; a job left `running` is queued again (it resumes from
        its last checkpoint). Returns the ids of requeued jobs.

        A holder is dead when its heartbeat is older than ``stale_s``, when it is a process of this
        host that no longer exists, or when it is this worker itself (called between jobs, so
        anything still held is left over from a failure)."""
        cutoff = time.time() - self.cfg.stale_s
        with self.db.session() as s:
            held = s.execute(select(JobRow.id, JobRow.status, JobRow.worker_id, JobRow.heartbeat_at)
                             .where(JobRow.worker_id.is_not(None))).all()
        requeued = []
        for job_id, status, owner, beat in held:
            if not (owner == self.id or beat is None or beat < cutoff or _dead_here(owner)):
                continue
            with self.db.session() as s:
                if status == RUNNING and transition(s, job_id, (RUNNING,), held_by=owner, status=QUEUED,
                                                    worker_id=None, estimated_finish=None):
                    add_event(s, job_id, "The worker running this job stopped; the job is queued again and "
                                         "resumes from its last checkpoint", level="warn")
                    requeued.append(job_id)
                else:
                    transition(s, job_id, None, held_by=owner, worker_id=None, estimated_finish=None)
        return requeued

    def validate_pending(self) -> int:
        """Move `validating_files` jobs to `queued` (files present and intact) or `failed`."""
        with self.db.session() as s:
            jobs = list(s.scalars(select(JobRow).where(JobRow.status == VALIDATING).order_by(JobRow.seq).limit(20)))
        for job in jobs:
            problem = self._check_files(job)
            with self.db.session() as s:
                if problem:
                    if transition(s, job.id, (VALIDATING,), status=FAILED, error=problem, finished_at=now()):
                        add_event(s, job.id, f"File validation failed: {problem['message']}", level="error")
                elif transition(s, job.id, (VALIDATING,), status=QUEUED):
                    add_event(s, job.id, "Files validated, moving job to queued state")
        return len(jobs)

    def _check_files(self, job: JobRow) -> dict | None:
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if not file_id:
                continue
            with self.db.session() as s:
                row = s.scalar(select(FileRow).where(FileRow.id == file_id))
            code = f"invalid_{param}"
            if row is None:
                return {"code": code, "message": f"The {param.replace('_', ' ')} {file_id} was deleted before "
                                                 "the job started.", "param": param}
            path = Path(row.path)
            if not path.is_file() or path.stat().st_size != row.bytes or sha256_file(path) != row.sha256:
                return {"code": code, "message": f"The stored bytes of {param.replace('_', ' ')} {file_id} are "
                                                 "missing or changed on the server.", "param": param}
        return None

    def claim(self) -> str | None:
        """Atomically take the oldest queued job nobody holds; returns its id."""
        values = {"status": RUNNING, "worker_id": self.id, "heartbeat_at": time.time()}
        waiting = (JobRow.status == QUEUED, JobRow.worker_id.is_(None))
        with self.db.session() as s:
            if self.db.dialect == "postgresql":
                job_id = s.scalar(select(JobRow.id).where(*waiting).order_by(JobRow.seq).limit(1)
                                  .with_for_update(skip_locked=True))
                if job_id is not None:
                    s.execute(update(JobRow).where(JobRow.id == job_id).values(**values)
                              .execution_options(synchronize_session=False))
                return job_id
            # SQLite: one conditional UPDATE (atomic; writers are serialised by the database lock)
            oldest = select(JobRow.seq).where(*waiting).order_by(JobRow.seq).limit(1).scalar_subquery()
            return s.execute(update(JobRow).where(JobRow.seq == oldest, *waiting).values(**values)
                             .returning(JobRow.id).execution_options(synchronize_session=False)).scalar()

    # ---- loops -------------------------------------------------------------------------------

    def run_once(self) -> bool:
        """One round: recover, validate, run at most one job. Returns whether there was work."""
        busy = bool(self.recover_stale())
        busy = self.validate_pending() > 0 or busy
        if self.stopping.is_set():
            return busy
        job_id = self.claim()
        if job_id is None:
            return busy
        self.process(job_id)
        return True

    def run_until_idle(self) -> int:
        """Work until nothing is left to do (or the worker is stopped); returns the rounds with work."""
        rounds = 0
        while not self.stopping.is_set() and self.run_once():
            rounds += 1
        return rounds

    def run_forever(self) -> None:
        log.info("worker %s: database %s, runs in %s", self.id, self.db.engine.url.render_as_string(),
                 self.runs_dir)
        while not self.stopping.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("worker round failed")
                busy = False
            if not busy:
                self.stopping.wait(self.cfg.poll_s)

    def process(self, job_id: str) -> None:
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == job_id))
        _JobRun(self, job).run()


class _Heartbeat(threading.Thread):
    """While a job trains: keep its heartbeat fresh, and validate newly created jobs meanwhile (so
    they reach `queued` even when every worker is busy)."""

    def __init__(self, worker: Worker, job_id: str):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.worker, self.job_id, self.done = worker, job_id, threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.worker.cfg.heartbeat_s):
            try:
                with self.worker.db.session() as s:
                    s.execute(update(JobRow).where(JobRow.id == self.job_id, JobRow.worker_id == self.worker.id)
                              .values(heartbeat_at=time.time()).execution_options(synchronize_session=False))
            except Exception:
                log.exception("heartbeat of %s failed", self.job_id)
            try:
                self.worker.validate_pending()
            except Exception:
                log.exception("validating new jobs failed")


class _JobRun:
    """One attempt at one job: pipeline.run with callbacks that stream events and checkpoints."""

    def __init__(self, worker: Worker, job: JobRow):
        self.w, self.job, self.db = worker, job, worker.db
        self.ft_name = fine_tuned_name(job.model, job.organization_id, job.suffix, job.id)
        with self.db.session() as s:
            self.recorded = set(s.scalars(select(CheckpointRow.step_number).where(CheckpointRow.job_id == job.id)))
        self.run_dir: Path | None = None
        self.paths: dict[str, str] = {}
        self.train_losses: dict[int, float] = {}
        self.evals: dict[int, dict] = {}
        self.latest_ckpt = 0
        self.total: int | None = None
        self.t0: float | None = None
        self.step0 = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        from .. import pipeline
        beat = _Heartbeat(self.w, self.job.id)
        beat.start()
        try:
            resume_dir, step = self._resumable()
            with self.db.session() as s:
                if resume_dir:
                    add_event(s, self.job.id, f"Resuming from checkpoint at step {step}",
                              data={"step": step, "resumed": True})
                else:
                    add_event(s, self.job.id, "Fine-tuning job started")
            if resume_dir:
                self.run_dir = resume_dir
                path = pipeline.run(None, resume_dir=resume_dir, on_step=self.on_step, on_eval=self.on_eval)
            else:
                prepared, continuation = self._prepare()
                self.run_dir = prepared.path
                self._record_run_dir()
                path = pipeline.run(prepared, on_step=self.on_step, on_eval=self.on_eval)
                if continuation is not None:
                    from ..lifecycle.continuation import record_outcome
                    record_outcome(prepared, continuation)
            self._succeed(Path(path))
        except _Stop as e:
            self._stopped(e)
        except TunesmithError as e:
            self._fail(self._user_error(e))
        except Exception as e:
            log.exception("job %s failed", self.job.id)
            self._write_traceback()
            self._fail({"code": "internal_error", "message": f"{type(e).__name__}: {e}", "param": None})
        finally:
            beat.done.set()

    def _resumable(self) -> tuple[Path | None, int]:
        """The run of an earlier attempt with a checkpoint to continue from, and its step."""
        from ..train import checkpoint
        if not self.job.run_dir or not is_run_dir(self.job.run_dir):
            return None, 0
        run_dir = Path(self.job.run_dir)
        step = checkpoint.latest_step(Layout(run_dir).checkpoints)
        return (run_dir, step) if step is not None else (None, 0)

    def _record_run_dir(self) -> None:
        """Store the run directory as soon as it exists, so a restart resumes exactly that run."""
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == self.job.id, JobRow.worker_id == self.w.id)
                      .values(run_dir=str(self.run_dir)).execution_options(synchronize_session=False))

    def _prepare(self) -> tuple[Run, dict | None]:
        """The job's run folder; for a job whose model is ``ft:…``, continuing that job's run (replay of its data,
        its adapter as the start) with the continuation record."""
        from .. import pipeline
        recipe = self._recipe()
        parent = (recipe.get("model") or {}).get("from")
        if not parent:
            return pipeline.prepare(recipe), None
        from ..lifecycle.continuation import prepare_from_run
        with self.db.session() as s:
            parent_dir = s.scalar(select(JobRow.run_dir).where(JobRow.fine_tuned_model == parent,
                                                                 JobRow.status == SUCCEEDED))
        if not parent_dir or not is_run_dir(parent_dir):
            raise TunesmithError(f"the model {parent} to continue from is gone", field="model")
        user = {**recipe, "model": {k: v for k, v in recipe["model"].items() if k != "from"}}
        return prepare_from_run(parent_dir, parent, user)

    def _recipe(self) -> dict:
        for param in ("training_file", "validation_file"):
            file_id = getattr(self.job, param)
            if not file_id:
                continue
            with self.db.session() as s:
                row = s.scalar(select(FileRow).where(FileRow.id == file_id))
            if row is None:
                raise TunesmithError(f"the {param.replace('_', ' ')} {file_id} was deleted", field=param)
            self.paths[param] = row.path
        return run_recipe(self.job.recipe, train_path=self.paths["training_file"],
                          validation_path=self.paths.get("validation_file"), output_dir=str(self.w.runs_dir))

    # ---- callbacks ---------------------------------------------------------------------------

    def on_step(self, record: dict) -> None:
        step = record["step"]
        t = time.time()
        if self.total is None:
            self.total = self._total_steps()
        self.total = max(self.total, step)
        if self.t0 is None:
            self.t0, self.step0 = t, step - 1
        per_step = (t - self.t0) / max(step - self.step0 - 1, 1) if step - self.step0 > 1 else None
        eta = int(t + per_step * (self.total - step)) if per_step is not None else None
        self.train_losses[step] = record["loss"]
        self._sync_checkpoints()
        with self.db.session() as s:
            status = s.execute(
                update(JobRow).where(JobRow.id == self.job.id, JobRow.worker_id == self.w.id)
                .values(heartbeat_at=t, estimated_finish=eta, step=step, total_steps=self.total,
                        run_dir=str(self.run_dir))
                .returning(JobRow.status).execution_options(synchronize_session=False)).scalar()
            stop = self._stop_reason(status, step)
            if stop is None and (step % self.w.cfg.event_every == 0 or step == self.total):
                add_event(s, self.job.id, f"Step {step}/{self.total}: training loss={record['loss']:.4f}",
                          type="metrics", data={"step": step, "total_steps": self.total,
                                                "train_loss": record["loss"], "learning_rate": record.get("lr"),
                                                "tokens_per_second": record.get("tokens_per_s")})
            if stop is None and status == QUEUED and \
                    transition(s, self.job.id, (QUEUED,), held_by=self.w.id, status=RUNNING):
                add_event(s, self.job.id, "Resumed before the pause took effect; training continues")
        if stop is not None:
            raise stop

    def _stop_reason(self, status: str | None, step: int) -> _Stop | None:
        """Why training must end after ``step`` (None: go on). A pause waits for a checkpoint boundary:
        it stops at the first step after a checkpoint, which resumes by replaying that step."""
        if status is None:
            return _Stop("lost", step)
        if status == CANCELLED:
            return _Stop("cancelled", step)
        if status == PAUSED and self.latest_ckpt and self.latest_ckpt == step - 1:
            return _Stop("paused", self.latest_ckpt)
        if self.w.stopping.is_set():
            return _Stop("shutdown", step)
        return None

    def on_eval(self, step: int, metrics: dict) -> None:
        self.evals[step] = metrics
        data = {"step": step, "valid_loss": metrics["val_loss"], "full_valid_loss": metrics["val_loss"],
                **{f"valid_{k}": v for k, v in metrics.items() if k not in ("val_loss", "tokens")}}
        with self.db.session() as s:
            add_event(s, self.job.id, f"Step {step}: validation loss={metrics['val_loss']:.4f}",
                      type="metrics", data=data)

    # ---- progress bookkeeping ----------------------------------------------------------------

    def _total_steps(self) -> int:
        run = Run(self.run_dir)
        cfg = run.recipe.train
        n = (run.load_json("data/manifest.json") or {}).get("counts", {}).get("train", 0)
        micro = max(1, round(math.ceil(n / cfg.batch_size) * cfg.epochs))
        if cfg.max_steps:
            micro = min(micro, cfg.max_steps * cfg.grad_accum)
        return math.ceil(micro / cfg.grad_accum)

    def _logged_metrics(self) -> dict[int, dict]:
        """step -> {train_loss, valid_loss} from the run's metrics.jsonl (covers earlier attempts)."""
        out: dict[int, dict] = {}
        for rec in Layout(self.run_dir).metrics():
            if "step" not in rec:
                continue
            key = "train_loss" if rec.get("type") == "train" else "valid_loss"
            out.setdefault(rec["step"], {})[key] = rec.get("loss" if key == "train_loss" else "val_loss")
        return out

    def _sync_checkpoints(self) -> None:
        """Record checkpoints the loop has saved since the last look (rows + an event each)."""
        if self.run_dir is None:
            return
        from ..train import checkpoint
        saved = checkpoint.saved_steps(Layout(self.run_dir).checkpoints)
        if saved:
            self.latest_ckpt = max(saved)
        new = sorted(set(saved) - self.recorded)
        if not new:
            return
        logged = self._logged_metrics() if any(st not in self.train_losses for st in new) else {}
        with self.db.session() as s:
            for step in new:
                metrics = {"step": step, "train_loss": self.train_losses.get(step, logged.get(step, {}).get("train_loss"))}
                val = self.evals.get(step, {}).get("val_loss", logged.get(step, {}).get("valid_loss"))
                if val is not None:
                    metrics.update(valid_loss=val, full_valid_loss=val)
                row = CheckpointRow(id=new_id("ftckpt_"), job_id=self.job.id, created_at=now(), step_number=step,
                                    metrics=metrics, fine_tuned_model_checkpoint=f"{self.ft_name}:ckpt-step-{step}",
                                    path=str(saved[step]))
                s.add(row)
                add_event(s, self.job.id, f"Checkpoint created at step {step}",
                          data={"step": step, "checkpoint": row.id})
        self.recorded.update(new)

    # ---- endings -----------------------------------------------------------------------------

    def _succeed(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._sync_checkpoints()
        info = Layout(run_dir).load_json("train.json") or {}
        result_file = self._results_file(run_dir)
        with self.db.session() as s:
            if transition(s, self.job.id, _ACTIVE, held_by=self.w.id, status=SUCCEEDED,
                          fine_tuned_model=self.ft_name, finished_at=now(), trained_tokens=info.get("tokens"),
                          result_files=[result_file] if result_file else [], estimated_finish=None,
                          worker_id=None, run_dir=str(run_dir), step=info.get("steps")):
                add_event(s, self.job.id, f"New fine-tuned model created: {self.ft_name}",
                          data={"fine_tuned_model": self.ft_name, "run_dir": str(run_dir)})
                add_event(s, self.job.id, "The job has successfully completed")
                return
            released = transition(s, self.job.id, None, held_by=self.w.id, worker_id=None, run_dir=str(run_dir))
            if released:
                add_event(s, self.job.id, "Training finished after the job was cancelled; no model was published",
                          level="warn")
            if result_file:
                path = s.scalar(select(FileRow.path).where(FileRow.id == result_file))
                s.execute(delete(FileRow).where(FileRow.id == result_file))
                if path:
                    Path(path).unlink(missing_ok=True)

    def _results_file(self, run_dir: Path) -> str | None:
        """A `fine-tune-results` file: per-step CSV of the training and validation metrics."""
        train_path = self.paths.get("training_file")
        if train_path is None:
            with self.db.session() as s:
                train_path = s.scalar(select(FileRow.path).where(FileRow.id == self.job.training_file))
        if train_path is None:
            return None
        rows: dict[int, dict] = {}
        for rec in Layout(run_dir).metrics():
            if "step" not in rec:
                continue
            row = rows.setdefault(rec["step"], {"step": rec["step"]})
            if rec.get("type") == "train":
                row.update(train_loss=rec["loss"], learning_rate=rec.get("lr"), tokens=rec.get("tokens"))
            else:
                row.update(valid_loss=rec.get("val_loss"))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["step", "train_loss", "valid_loss", "learning_rate", "tokens"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))
        file_id = new_id("file-")
        path = Path(train_path).parent / f"{file_id}.csv"
        atomic_write_text(path, buf.getvalue())
        with self.db.session() as s:
            s.add(FileRow(id=file_id, created_at=now(), bytes=path.stat().st_size, filename="step_metrics.csv",
                          purpose="fine-tune-results", status="processed", path=str(path),
                          sha256=sha256_file(path)))
        return file_id

    def _stopped(self, stop: _Stop) -> None:
        with self.db.session() as s:
            if stop.reason == "shutdown" and transition(s, self.job.id, (RUNNING,), held_by=self.w.id,
                                                        status=QUEUED, worker_id=None, estimated_finish=None):
                add_event(s, self.job.id, f"The worker shut down at step {stop.step}; the job is queued "
                                          "again and resumes from its last checkpoint", level="warn")
                return
            if stop.reason == "lost" or not transition(s, self.job.id, None, held_by=self.w.id, worker_id=None,
                                                        estimated_finish=None):
                return
            if stop.reason == "cancelled":
                add_event(s, self.job.id, f"Training stopped at step {stop.step}: the job was cancelled")
            elif stop.reason == "paused":
                add_event(s, self.job.id, f"Job paused at the checkpoint of step {stop.step}; resuming continues "
                                          "from there", data={"step": stop.step})

    def _user_error(self, e: TunesmithError) -> dict:
        message = str(e)
        for param in ("training_file", "validation_file"):
            if param in self.paths:
                message = message.replace(self.paths[param], getattr(self.job, param))
        param = next((p for p in ("training_file", "validation_file")
                      if e.file and self.paths.get(p) and e.file == self.paths[p]), None)
        if param is None and e.field in ("training_file", "validation_file"):
            param = e.field
        return {"code": f"invalid_{param}" if param else "training_failed", "message": message, "param": param}

    def _fail(self, error: dict) -> None:
        with self.db.session() as s:
            if transition(s, self.job.id, _ACTIVE, held_by=self.w.id, status=FAILED, error=error,
                          finished_at=now(), estimated_finish=None, worker_id=None):
                add_event(s, self.job.id, f"Fine-tuning job failed: {error['message']}", level="error")
            else:
                transition(s, self.job.id, None, held_by=self.w.id, worker_id=None)

    def _write_traceback(self) -> None:
        if self.run_dir is not None and self.run_dir.is_dir():
            atomic_write_text(self.run_dir / "job-error.txt", traceback.format_exc())


class WorkerThread:
    """A worker running in a background thread of this process (e.g. inside the API server)."""

    def __init__(self, cfg: WorkerConfig, db: Database | None = None):
        self.worker = Worker(cfg, db)
        self.thread = threading.Thread(target=self.worker.run_forever, daemon=True, name="tunesmith-jobs-worker")

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self, timeout: float | None = 30) -> None:
        """Stop taking jobs; a job in training is requeued at its next step."""
        self.worker.stop()
        self.thread.join(timeout)
