"""`PostgresServer`: a throw-away PostgreSQL 15 server for tests, benchmarks and the demo.

Runs Debian's binaries (`/usr/lib/postgresql/15/bin/initdb` and `postgres`, package
`postgresql-15`) on a data directory in a fresh temp dir, listening on 127.0.0.1 only, on a
free port, with no Unix socket. PostgreSQL refuses to run as root, so when this process is
root both binaries run as the `postgres` OS user (created by Debian's package) through
`runuser`, in a directory that user owns. Authentication is `trust` (loopback only).

    server = PostgresServer()
    url = server.start()             # "postgresql+psycopg://postgres@127.0.0.1:PORT/postgres"
    db_url = server.create_database("vt_test")
    ...
    server.stop()                    # no process left, temp dir removed
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack_local.ports import free_port

PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
DB_USER = "postgres"
_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresServer:
    """One PostgreSQL server process on 127.0.0.1 (see the module docstring).

    `durable=False` (tests) turns off fsync and full-page writes: fast; committed data
    survives a crash of the server's processes (`crash()`), not one of the machine.
    `durable=True` keeps PostgreSQL's defaults (benchmarks that report real figures).
    `start_timeout_s` bounds initdb + start-up."""

    def __init__(
        self,
        *,
        bin_dir: Path = PG_BIN_DIR,
        durable: bool = False,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_postgres_user = os.geteuid() == 0

    # ------------------------------------------------------------ helpers

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir / "postgres.log"

    def _command(self, *argv: str) -> list[str]:
        if self._as_postgres_user:
            return ["runuser", "-u", OS_USER, "--", *argv]
        return list(argv)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def url(self, database: str = "postgres") -> str:
        """The async SQLAlchemy URL of `database` on this server."""
        if self.port is None:
            raise InvalidInputError("PostgresServer: not started")
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def _dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={DB_USER} dbname={database}"

    # ------------------------------------------------------------ life cycle

    def start(self) -> str:
        """initdb + start the server; returns `url()` of the `postgres` database once it
        accepts connections. Raises InvalidInputError when the binaries (Debian's
        `postgresql-15`) or the `postgres` OS user are missing, TemporaryFailure (with the
        server log) when it does not come up in time."""
        if self._proc is not None:
            return self.url()
        for binary in ("initdb", "postgres"):
            if not (self.bin_dir / binary).is_file():
                raise InvalidInputError(
                    f"PostgreSQL: {self.bin_dir / binary} missing; install Debian's "
                    "postgresql-15 (scripts/setup.sh)"
                )
        self.base_dir = Path(tempfile.mkdtemp(prefix="voicetrack-pg-"))
        if self._as_postgres_user:
            try:
                entry = pwd.getpwnam(OS_USER)
            except KeyError:
                self._remove_dir()
                raise InvalidInputError(
                    f"PostgreSQL: running as root needs the {OS_USER!r} OS user "
                    "(created by Debian's postgresql package)"
                ) from None
            os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        try:
            self._initdb()
            last_error = ""
            for _attempt in range(3):  # a free port can be taken between pick and bind
                self.port = free_port()
                try:
                    self._spawn()
                    return self.url()
                except TemporaryFailure as exc:
                    last_error = str(exc)
                    self._kill()
                    if "could not bind" not in self._log_tail() and "in use" not in last_error:
                        raise
            raise TemporaryFailure(f"PostgreSQL did not start: {last_error}")
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        result = subprocess.run(
            self._command(
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", DB_USER,
                "-A", "trust",
                "-E", "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ),
            capture_output=True,
            timeout=self.start_timeout_s,
            cwd=self.base_dir,
            check=False,
        )
        if result.returncode != 0:
            raise TemporaryFailure(
                f"initdb failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )

    def _spawn(self) -> None:
        settings = [
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"port={self.port}",
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
            "-c", "logging_collector=off",
        ]
        if not self.durable:
            settings += [
                "-c", "fsync=off",
                "-c", "full_page_writes=off",
            ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(str(self.bin_dir / "postgres"), "-D", str(self.data_dir), *settings),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TemporaryFailure(
                    f"postgres exited with {self._proc.returncode}:\n{self._log_tail()}"
                )
            try:
                with psycopg.connect(self._dsn(), connect_timeout=2, autocommit=True):
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise TemporaryFailure(
            f"postgres not accepting connections after {self.start_timeout_s} s:\n"
            f"{self._log_tail()}"
        )

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError, AssertionError):
            return None

    def _kill(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT to the postmaster), then SIGKILL of the process group if it
        lingers; waits until the wrapper process has exited."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pid = self._postmaster_pid()
        targets = [p for p in (pid, proc.pid) if p is not None]
        for target in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
        # The postmaster's children exit with it; wait for the pid file's owner to go.
        deadline = time.monotonic() + timeout_s
        while pid is not None and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)

    def crash(self, timeout_s: float = 20.0) -> None:
        """Kill the server the hard way (SIGKILL to its whole process group), keeping the
        data directory and port, as a machine or container failure would. For disruptive
        tests; `restart()` brings it back (PostgreSQL runs crash recovery)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.05)
        # Every process of the server is dead (zombies awaiting their reaper at most), but
        # PostgreSQL would take a zombie's pid in the lock file for a live postmaster.
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "postmaster.pid").unlink()

    def restart(self) -> str:
        """Start the server again on the same data directory and port (after `crash()` or
        a stop of the process); returns `url()`."""
        if self.base_dir is None or self.port is None:
            raise InvalidInputError("PostgresServer.restart: never started")
        if self._proc is None:
            self._spawn()
        return self.url()

    def _remove_dir(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def stop(self) -> None:
        """Stop the server (no process left) and remove its temp dir. Safe to call twice."""
        self._kill()
        self._remove_dir()
        self.port = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ databases

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` (lowercase letters, digits, `_`); returns its async URL."""
        if not _DB_NAME_RE.match(name):
            raise InvalidInputError(f"database name {name!r}: lowercase letters, digits, _")
        with psycopg.connect(self._dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name` if it exists, disconnecting its sessions first."""
        if not _DB_NAME_RE.match(name):
            raise InvalidInputError(f"database name {name!r}: lowercase letters, digits, _")
        with psycopg.connect(self._dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group `pgid`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; treat it as gone when /proc says so.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return False
    return state != "Z"
