"""The operator started while its PostgreSQL is down (issue 11 scenario 5): it keeps trying
and runs within seconds of the database coming back (kopf's default retry of a failed
start-up is 60 s: before the fix it stayed down that long)."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from voicetrack.objectstore import S3Settings
from voicetrack_local.postgres import PostgresServer
from voicetrack_local.stack import OperatorProcess, StackError, install_crds

pytestmark = pytest.mark.disruptive

DOWN_S = 8.0
"""How long PostgreSQL stays down after the operator's start: its first attempt fails."""


def test_the_operator_runs_within_seconds_of_its_database_coming_back(
        cluster: Any, s3_server: S3Settings, postgres_server: PostgresServer,
        tmp_path: Path) -> None:
    install_crds(cluster.kubeconfig)
    db_url = postgres_server.create_database(f"vt_nodb_{secrets.token_hex(4)}")
    op = OperatorProcess(cluster.kubeconfig, s3_server, db_url, tmp_path / "operator.log",
                         extra_env={"VOICETRACK_NAMESPACES": "nodbstart-*",
                                    "VOICETRACK_LOG_LEVEL": "INFO"})
    failure: list[StackError] = []

    def start() -> None:
        try:
            op.start(timeout_s=DOWN_S + 90)
        except StackError as err:
            failure.append(err)

    postgres_server.crash()
    starter = threading.Thread(target=start)
    try:
        starter.start()
        time.sleep(DOWN_S)
        assert starter.is_alive(), "healthy without its database"
        back = time.monotonic()
        postgres_server.restart()
        starter.join(120)
        waited = time.monotonic() - back
    finally:
        postgres_server.restart()
        starter.join(120)
        op.stop()
    assert not failure, failure[0]
    print(f"operator healthy {waited:.1f} s after PostgreSQL came back")
    assert waited < 30, f"{waited:.1f} s\n{op.tail(40)}"
    assert "database not ready" in (tmp_path / "operator.log").read_text()
