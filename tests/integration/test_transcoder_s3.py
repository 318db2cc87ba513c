"""The S3 server the transcoder runs against in tests, the demo and e2e: `SeaweedServer`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from voicetrack.errors import TemporaryFailure
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.seaweed import SeaweedServer

pytestmark = pytest.mark.integration


def _listening(pid: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def test_loopback_only_credentials_enforced_and_nothing_left(tmp_path: Path) -> None:
    server = SeaweedServer(tmp_path / "weed", access_key="k-test", secret_key="s-test",
                           bucket="own")
    settings = server.start()
    assert server.process is not None
    pid = server.process.pid
    try:
        addresses = _listening(pid)
        assert len(addresses) >= 5
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
        assert f"127.0.0.1:{server.ports['s3']}" in addresses

        store = ObjectStore(settings)
        store.put_bytes("a/b.bin", b"hello")
        with urllib.request.urlopen(store.presigned_get("a/b.bin", 60), timeout=10) as resp:
            assert resp.read() == b"hello"
        wrong = ObjectStore(dataclasses.replace(settings, secret_key="nope"))
        with pytest.raises(TemporaryFailure, match=r"SignatureDoesNotMatch|AccessDenied"):
            wrong.get_bytes("a/b.bin")
    finally:
        server.stop()
    assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)
    assert _listening(pid) == []
    server.stop()  # idempotent


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_shared_fixture_gives_fresh_buckets(s3_server: S3Settings,
                                            object_store: ObjectStore) -> None:
    assert object_store.bucket != s3_server.bucket
    assert object_store.list_keys("") == []
