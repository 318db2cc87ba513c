"""`voicetrack check` (voicetrack/healthcheck.py), the command `helm test` runs: against a real
SeaweedFS, a real PostgreSQL and a real HTTP server standing for the operator's /healthz,
each check passes when the thing is there and fails, naming it, when it is not."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from voicetrack.cli import app
from voicetrack.db.migrate import upgrade_head
from voicetrack.healthcheck import check_database, check_operator_url, check_s3
from voicetrack.objectstore import S3Settings
from voicetrack_local.ports import free_port
from voicetrack_local.postgres import PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture
def healthz() -> Iterator[tuple[str, dict[str, object]]]:
    """An HTTP server answering GET /healthz with the JSON in the returned dict ("body")."""
    answer: dict[str, object] = {"body": {"database": "ok"}, "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = json.dumps(answer["body"]).encode()
            self.send_response(int(str(answer["status"])))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", answer
    finally:
        server.shutdown()
        server.server_close()


def test_operator_check_needs_every_probe_ok(healthz: tuple[str, dict[str, object]]) -> None:
    url, answer = healthz
    assert check_operator_url(url).ok
    answer["body"] = {"database": "unavailable"}
    res = check_operator_url(url)
    assert not res.ok and "unavailable" in res.detail
    answer["body"], answer["status"] = {"database": "ok"}, 500
    assert not check_operator_url(url).ok
    down = f"http://127.0.0.1:{free_port()}/healthz"
    assert not check_operator_url(down, timeout_s=2).ok


def test_database_check_wants_the_alembic_head(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database(f"vt_chk_{secrets.token_hex(4)}")
    res = check_database(url)
    assert not res.ok and "at revision None" in res.detail, res
    upgrade_head(url)
    assert check_database(url).ok
    gone = url.replace(url.rsplit("/", 1)[1], f"vt_missing_{secrets.token_hex(3)}")
    assert not check_database(gone).ok
    assert check_database("sqlite+aiosqlite:////var/lib/voicetrack/voicetrack.db").ok


def test_s3_check_needs_the_bucket_and_the_keys(s3_server: S3Settings) -> None:
    assert check_s3(s3_server).ok
    res = check_s3(replace(s3_server, secret_key="wrong-secret"))
    assert not res.ok, res
    res = check_s3(replace(s3_server, bucket=f"vt-missing-{secrets.token_hex(3)}"))
    assert not res.ok and "no such bucket" in res.detail, res


def test_the_command_prints_each_check_and_fails_on_any(
    healthz: tuple[str, dict[str, object]], s3_server: S3Settings,
    postgres_server: PostgresServer,
) -> None:  # fmt: skip
    url, answer = healthz
    db = postgres_server.create_database(f"vt_chk_{secrets.token_hex(4)}")
    upgrade_head(db)
    env = {**s3_server.env(), "VOICETRACK_DATABASE_URL": db}
    res = CliRunner().invoke(app, ["check", "--operator-url", url], env=env)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["ok", "operator:"], ["ok", "database:"],
                                                ["ok", "s3:"]], res.output  # fmt: skip
    answer["body"] = {"database": "unavailable"}
    res = CliRunner().invoke(app, ["check", "--operator-url", url], env=env)
    assert res.exit_code == 1 and "FAIL operator:" in res.output, res.output
