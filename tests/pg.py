"""A throwaway PostgreSQL server for tests (initdb in a temp dir, Unix socket, free port), one per process."""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl (or those on PATH)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name)
                  if Path(d).parent.name.isdigit() else 0)
    for d in reversed(dirs):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl start in a temporary folder; as root the server runs as an unprivileged user."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        self.port = _free_port()
        self.user = None
        if os.geteuid() == 0:    # initdb refuses to run as root
            self.user = next(u for u in ("postgres", "nobody") if _has_user(u))
            ent = pwd.getpwnam(self.user)
            for p in (self.root, self.sock):
                os.chown(p, ent.pw_uid, ent.pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                      "-E", "UTF8", "--locale=C")
            opts = (f"-k {self.sock} -p {self.port} -c listen_addresses='' -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts,
                      "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as e:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").is_file() else ""
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start: {e.stderr or e.stdout}\n{log}") from None
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.sock}&port={self.port}"

    def create_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host=str(self.sock), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


_server: PostgresServer | None = None
_failure: str | None = None


def server() -> PostgresServer | str:
    """The process-wide server (started on first use), or why there is none (a skip reason)."""
    global _server, _failure
    if _server is None and _failure is None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            _failure = "no PostgreSQL binaries (initdb/pg_ctl) found in /usr/lib/postgresql/*/bin or on PATH"
        else:
            try:
                _server = PostgresServer(bin_dir).start()
                atexit.register(_server.stop)
            except (RuntimeError, OSError, StopIteration, subprocess.TimeoutExpired) as e:
                _failure = f"PostgreSQL could not be started here: {e}"
    return _server if _server is not None else _failure
