"""e2e fixtures: the whole stack (local cluster, SeaweedFS, PostgreSQL, operator)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from voicetrack.db.service import RecordingService
from voicetrack.local.kubectl import kubectl
from voicetrack.local.postgres import PostgresServer
from voicetrack.local.stack import OperatorProcess, install_crds, prepare_namespace
from voicetrack.objectstore import ObjectStore, S3Settings


@dataclass
class Stack:
    """Everything an e2e test talks to."""

    kubeconfig: Path
    s3: S3Settings
    store: ObjectStore
    database_url: str
    operator: OperatorProcess

    def kubectl(self, *args: str, **kw: Any) -> Any:
        return kubectl(self.kubeconfig, *args, **kw)

    def db(self, fn: Any) -> Any:
        """Run `await fn(service)` on a fresh RecordingService (own loop, closed after)."""
        async def go() -> Any:
            svc = RecordingService.from_url(self.database_url)
            try:
                return await fn(svc)
            finally:
                await svc.close()

        return asyncio.run(go())


@pytest.fixture(scope="session")
def stack(cluster: Any, s3_server: S3Settings, postgres_server: PostgresServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """CRDs installed, a database, and one operator for all e2e tests."""
    install_crds(cluster.kubeconfig)
    db_url = postgres_server.create_database(f"vt_e2e_{secrets.token_hex(4)}")
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster.kubeconfig, s3_server, db_url, log,
                         extra_env={"VOICETRACK_LOG_LEVEL": "INFO"})
    op.start()
    store = ObjectStore(s3_server)
    store.ensure_bucket()
    try:
        yield Stack(cluster.kubeconfig, s3_server, store, db_url, op)
    finally:
        op.stop()
        print(f"operator log: {log}\n{op.tail(60)}")


@pytest.fixture
def e2e_namespace(stack: Stack) -> Iterator[str]:
    """A fresh namespace with the S3 Secret; deleted after the test (not waited for)."""
    ns = f"e2e-{secrets.token_hex(3)}"
    prepare_namespace(stack.kubeconfig, ns, stack.s3)
    yield ns
    stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
