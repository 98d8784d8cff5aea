"""SQLAlchemy 2 storage of files, jobs, events and checkpoints: SQLite (WAL) by default, PostgreSQL by URL."""
from __future__ import annotations

import secrets
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event, exists, or_, select, text, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..errors import TunesmithError

# job statuses; the terminal ones never change again
VALIDATING, QUEUED, RUNNING, PAUSED = "validating_files", "queued", "running", "paused"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (VALIDATING, QUEUED, RUNNING, PAUSED)        # the worker still reads these jobs' files
STATUSES = (*ACTIVE, *TERMINAL)

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24) -> str:
    """An opaque id in OpenAI's style, e.g. ``file-`` + 24 base62 characters."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def now() -> int:
    """Unix seconds (every timestamp the API returns)."""
    return int(time.time())


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)   # list order
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    path: Mapped[str] = mapped_column(Text)                      # absolute path of the stored bytes
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(32), nullable=True)    # fine-tune: detected data format
    examples: Mapped[int | None] = mapped_column(Integer, nullable=True)


class JobRow(Base):
    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(32), index=True)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    method_type: Mapped[str] = mapped_column(String(32))
    hyperparameters: Mapped[dict] = mapped_column(JSON)          # resolved values of the method
    meta: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    integrations: Mapped[list | None] = mapped_column(JSON, nullable=True)
    organization_id: Mapped[str] = mapped_column(String(128))
    recipe: Mapped[dict] = mapped_column(JSON)                   # recipe without data paths / output dir
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    run_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)


class EventRow(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(600))
    path: Mapped[str | None] = mapped_column(Text, nullable=True)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL journaling, a busy timeout and foreign keys.

    A URL that does not parse or names a backend that is not installed is a TunesmithError (one line).
    """
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    try:
        parsed = make_url(url)
        parsed.get_dialect()            # loads the backend's driver module: an unknown scheme fails here
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as e:
        raise TunesmithError(f"cannot use database URL {url!r} ({str(e).splitlines()[0]}); expected e.g. "
                             "sqlite:///runs/jobs.db or postgresql+psycopg://user@host/db", field="db_url") from e
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
        return engine
    return create_engine(parsed, pool_pre_ping=True)


class Database:
    """Engine + sessions over the jobs schema (created on first use)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._create_schema()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _create_schema(self) -> None:
        for attempt in range(3):   # a server and a worker starting together may race on CREATE TABLE
            try:
                with self.engine.begin() as conn:
                    if self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(7316001)"))
                    Base.metadata.create_all(conn)
                return
            except (OperationalError, ProgrammingError):
                if attempt == 2:
                    raise
                time.sleep(0.2)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()


def add_event(s: Session, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None) -> EventRow:
    row = EventRow(id=new_id("ftevent-"), job_id=job_id, created_at=now(), level=level, message=message,
                   type=type, data=data)
    s.add(row)
    return row


def transition(s: Session, job_id: str, from_statuses: tuple[str, ...] | list[str] | None, *,
               held_by: Any = ..., **values) -> bool:
    """Atomically set ``values`` on job ``job_id`` if its status is in ``from_statuses`` (any when
    None) and, when ``held_by`` is given, the job is held by that worker (``None``: by nobody).
    Returns whether the row changed."""
    stmt = update(JobRow).where(JobRow.id == job_id)
    if from_statuses is not None:
        stmt = stmt.where(JobRow.status.in_(list(from_statuses)))
    if held_by is None:
        stmt = stmt.where(JobRow.worker_id.is_(None))
    elif held_by is not ...:
        stmt = stmt.where(JobRow.worker_id == held_by)
    return s.execute(stmt.values(**values).execution_options(synchronize_session=False)).rowcount == 1


def file_in_use(file_id):
    """SQL condition: a job that is not finished trains on (or validates with) file ``file_id``
    (a column or a value)."""
    return exists(select(JobRow.id).where(or_(JobRow.training_file == file_id, JobRow.validation_file == file_id),
                                          JobRow.status.in_(ACTIVE)))


def jobs_using(s: Session, file_id: str) -> list[str]:
    """Ids of the unfinished jobs that use file ``file_id``, oldest first."""
    return list(s.scalars(select(JobRow.id).where(or_(JobRow.training_file == file_id,
                                                      JobRow.validation_file == file_id),
                                                  JobRow.status.in_(ACTIVE)).order_by(JobRow.seq)))


def after_cursor(s: Session, model, after: str | None, what: str, *filters, scope: str = "") -> int | None:
    """The ``seq`` of the row with id ``after`` (a list's cursor), None without one; an unknown id is a 400."""
    if not after:
        return None
    seq = s.scalar(select(model.seq).where(model.id == after, *filters))
    if seq is None:
        from .errors import bad_request
        raise bad_request(f"Invalid 'after': no {what} {after}{scope}", param="after")
    return seq


def page(s: Session, model, *filters, after_seq: int | None, limit: int, descending: bool = True):
    """One page of ``model`` rows in ``seq`` order after ``after_seq``; returns (rows, has_more)."""
    stmt = select(model).where(*filters)
    if after_seq is not None:
        stmt = stmt.where(model.seq < after_seq if descending else model.seq > after_seq)
    stmt = stmt.order_by(model.seq.desc() if descending else model.seq.asc()).limit(limit + 1)
    rows = list(s.scalars(stmt))
    return rows[:limit], len(rows) > limit
