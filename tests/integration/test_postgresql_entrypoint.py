"""The bundled PostgreSQL image's entrypoint (images/postgresql/entrypoint.sh) run for real
on Debian's postgresql-15 binaries, the way the chart's StatefulSet runs it (its env, a
data directory that outlives the process):

- the superuser `postgres` cannot log in over TCP, not even with the app's password; the
  app role is no superuser (no `COPY … TO PROGRAM`) but owns its database: Alembic
  migrates it to head as that role;
- a restart with another POSTGRES_PASSWORD (a new or rotated chart Secret on a kept
  claim) sets the app role's password: the new one logs in, the old one does not;
- the optional read-only role reads the app's tables (made after it, too) and cannot write
  even when it turns its session's read-only default off;
- no password reaches the log or a process's command line."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from voicetrack.db import migrate
from voicetrack_local.ports import free_port
from voicetrack_local.postgres import OS_USER
from voicetrack_web.access import MeetingAccess, Viewer, read_only_engine

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "images" / "postgresql" / "entrypoint.sh"
BIN = Path("/usr/lib/postgresql/15/bin")
APP_PW = "AppPw123-secret"
RO_PW = "ReadPw456-secret"
GUILD = "100000000000000001"


@dataclass
class Entrypoint:
    """One data directory `pgdata` served by the entrypoint on 127.0.0.1:`port`; `start`
    runs it with the given passwords, `stop` sends SIGTERM (a fast PostgreSQL shutdown).
    `log` holds everything the entrypoint and the server printed."""

    pgdata: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    cmdlines: list[str] = field(default_factory=list)

    def start(self, password: str, readonly_password: str | None = RO_PW) -> None:
        """Run the entrypoint and wait (≤ 60 s) until the app role logs in over TCP;
        meanwhile record every command line of its process tree in `cmdlines`.
        Raises AssertionError when it exits or never becomes reachable."""
        env = {
            "PATH": f"{BIN}:/usr/bin:/bin", "PGDATA": str(self.pgdata),
            "POSTGRES_PASSWORD": password, "POSTGRES_USER": "voicetrack",
            "POSTGRES_DB": "voicetrack", "POSTGRES_PORT": str(self.port),
            "POSTGRES_LISTEN": "127.0.0.1",
            "TMPDIR": str(self.pgdata.parent), "HOME": str(self.pgdata.parent),
        }
        if readonly_password is not None:
            env |= {"POSTGRES_READONLY_USER": "voicetrack_ro",
                    "POSTGRES_READONLY_PASSWORD": readonly_password}
        # As root (a CI container): the image's non-root user is Debian's `postgres`.
        as_user = {"user": OS_USER, "group": OS_USER} if os.geteuid() == 0 else {}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         **as_user)  # type: ignore[call-overload]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._record_cmdlines()
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with self.connect("voicetrack", password):
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise AssertionError(f"not reachable: {self.log.read_text()[-3000:]}")

    def _record_cmdlines(self) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if os.getpgid(int(proc.name)) != self.proc.pid:  # type: ignore[union-attr]
                    continue
                self.cmdlines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ")
                                     .decode(errors="replace"))
            except (OSError, ProcessLookupError):
                continue

    def connect(self, user: str, password: str, dbname: str = "voicetrack"
                ) -> psycopg.Connection[tuple[object, ...]]:
        """A TCP connection (autocommit) as `user`; raises psycopg.OperationalError when
        refused."""
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user,
                               password=password, dbname=dbname, autocommit=True,
                               connect_timeout=5)

    def url(self, user: str, password: str) -> str:
        """The SQLAlchemy URL of the app database as `user`."""
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{self.port}/voicetrack"

    def stop(self) -> None:
        """SIGTERM the server and wait (≤ 30 s) for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None


@pytest.fixture
def pg() -> Iterator[Entrypoint]:
    if not (BIN / "initdb").exists() or shutil.which("psql") is None:
        pytest.fail(f"PostgreSQL 15 binaries missing in {BIN} (apt install postgresql-15)")
    # Not under pytest's tmp_path (mode 0700, root's): the server's user must reach it.
    base = Path(tempfile.mkdtemp(prefix="voicetrack-pg-entrypoint-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(OS_USER)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    ep = Entrypoint(pgdata=base / "pgdata", log=base / "entrypoint.log")
    try:
        yield ep
    finally:
        ep.stop()
        shutil.rmtree(base, ignore_errors=True)


def _refused(ep: Entrypoint, user: str, password: str, dbname: str = "voicetrack") -> bool:
    try:
        with ep.connect(user, password, dbname):
            return False
    except psycopg.OperationalError:
        return True


def test_superuser_unreachable_over_tcp_and_the_app_role_migrates(pg: Entrypoint) -> None:
    pg.start(APP_PW)
    assert _refused(pg, "postgres", APP_PW, "postgres")
    assert _refused(pg, "postgres", "", "postgres")
    with pg.connect("voicetrack", APP_PW) as conn:
        row = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                           "WHERE rolname = current_user").fetchone()
        assert row == (False, False, False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    migrate.upgrade_head(pg.url("voicetrack", APP_PW))
    assert migrate.current_revision(pg.url("voicetrack", APP_PW)) == migrate.head_revision()


def test_a_new_secret_on_a_kept_data_directory_sets_the_password(pg: Entrypoint) -> None:
    pg.start(APP_PW)
    pg.stop()
    pg.start("RotatedPw789", readonly_password="RotatedRo000")
    assert _refused(pg, "voicetrack", APP_PW)
    assert _refused(pg, "voicetrack_ro", RO_PW)
    with pg.connect("voicetrack_ro", "RotatedRo000") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    log = pg.log.read_text()
    for secret in (APP_PW, RO_PW, "RotatedPw789", "RotatedRo000"):
        assert secret not in log
        assert not [c for c in pg.cmdlines if secret in c]
    assert pg.cmdlines  # the recorder saw the process tree


def test_the_read_only_role_reads_and_cannot_write(pg: Entrypoint) -> None:
    pg.start(APP_PW)
    migrate.upgrade_head(pg.url("voicetrack", APP_PW))
    with pg.connect("voicetrack", APP_PW) as conn:
        conn.execute("INSERT INTO heartbeats (service_name, last_beat, status) "
                     "VALUES ('op', now(), 'ok')")
        conn.execute("INSERT INTO meetings (id, guild_id, channel_id, started_at) "
                     "VALUES (%s, %s, %s, now())", ("m" * 16, GUILD, GUILD))
    with pg.connect("voicetrack_ro", RO_PW) as conn:
        assert conn.execute("SELECT count(*) FROM heartbeats").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM meetings").fetchone() == (1,)
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM heartbeats")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE evil (x int)")
    # The web page's own reads, through its engine, as the read-only role.
    assert asyncio.run(_web_reads(pg.url("voicetrack_ro", RO_PW))) == ({GUILD}, ["m" * 16])


def test_a_data_directory_with_an_open_superuser_is_closed_on_start(pg: Entrypoint) -> None:
    """What the earlier entrypoint left on a claim (the superuser with the app's password,
    pg_hba.conf admitting everyone over TCP) does not survive the next start."""
    pg.start(APP_PW)
    with psycopg.connect(host="/tmp", port=pg.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:  # the local socket: trust
        conn.execute(f"ALTER ROLE postgres PASSWORD '{APP_PW}'")
    hba = pg.pgdata / "pg_hba.conf"
    hba.write_text("host all all 0.0.0.0/0 scram-sha-256\n" + hba.read_text())
    pg.stop()
    pg.start(APP_PW)
    assert _refused(pg, "postgres", APP_PW, "postgres")
    with psycopg.connect(host="/tmp", port=pg.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        assert conn.execute("SELECT rolpassword IS NULL FROM pg_authid "
                            "WHERE rolname = 'postgres'").fetchone() == (True,)


async def _web_reads(url: str) -> tuple[set[str], list[str]]:
    access = MeetingAccess(read_only_engine(url))
    try:
        views = await access.meetings(Viewer("1", {GUILD: True}), GUILD) or []
        return await access.guilds_with_meetings([GUILD]), [v.id for v in views]
    finally:
        await access.engine.dispose()


def test_a_server_that_cannot_start_says_why(pg: Entrypoint) -> None:
    """Review of the day's change: the set-up server's output went to /dev/null, so a kept
    data directory PostgreSQL refuses left only "pg_ctl: could not start server" in the
    pod's log. Its own reason is shown now."""
    pg.start(APP_PW)
    pg.stop()
    pg.pgdata.chmod(0o777)  # PostgreSQL refuses a data directory others can read
    with pytest.raises(AssertionError):
        pg.start(APP_PW)
    assert pg.proc is not None and pg.proc.wait(30) == 1
    log = pg.log.read_text()
    assert "the set-up server did not start" in log and "invalid permissions" in log, log
