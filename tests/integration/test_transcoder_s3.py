"""The S3 server the transcoder runs against in tests, the demo and e2e: `SeaweedServer`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest

from voicetrack.errors import InvalidInputError, TemporaryFailure
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


def _forwarder(target: tuple[str, int]) -> tuple[int, Callable[[], None]]:
    """A TCP forwarder on 127.0.0.2 (the 'public' address) to `target`; returns its port
    and a stop function."""
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen()
    stopping = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(target)
            threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def stop() -> None:
        stopping.set()
        listener.close()
    return listener.getsockname()[1], stop


def test_links_are_signed_for_the_public_endpoint(s3_server: S3Settings,
                                                  object_store: ObjectStore) -> None:
    object_store.put_bytes("final/a.mp3", b"public bytes")
    internal = urlparse(s3_server.endpoint)
    port, stop = _forwarder((internal.hostname or "127.0.0.1", internal.port or 80))
    try:
        public = ObjectStore(dataclasses.replace(
            object_store.settings, public_endpoint=f"http://127.0.0.2:{port}"))
        link = public.presigned_link("final/a.mp3", 120)
        assert link.format == "mp3" and link.expires_in_seconds == 120
        assert urlparse(link.url).netloc == f"127.0.0.2:{port}"
        with urllib.request.urlopen(link.url, timeout=10) as resp:
            assert resp.read() == b"public bytes"
            assert resp.headers.get("Content-Disposition") is None  # plays in a browser
        saved = public.presigned_link("final/a.mp3", 120, download_as="standup-mix.mp3")
        with urllib.request.urlopen(saved.url, timeout=10) as resp:
            assert resp.read() == b"public bytes"
            assert resp.headers["Content-Disposition"] == (
                'attachment; filename="standup-mix.mp3"')
        with pytest.raises(InvalidInputError, match="download_as"):
            public.presigned_link("final/a.mp3", 120, download_as='a".mp3')
        # A link signed for the internal address, sent to the public one, is refused:
        # SigV4 signs the Host header, so rewriting the host afterwards cannot work.
        internal_url = object_store.presigned_get("final/a.mp3", 120)
        rewritten = internal_url.replace(internal.netloc, f"127.0.0.2:{port}", 1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rewritten, timeout=10)
        assert refused.value.code == 403
        with pytest.raises(InvalidInputError, match="expires"):
            public.presigned_get("final/a.mp3", 8 * 24 * 3600)
    finally:
        stop()
