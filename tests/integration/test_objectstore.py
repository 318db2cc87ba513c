"""The object-store adapter's error translation on a real SeaweedFS: S3 and network
failures become the project's errors (NotFoundError, TemporaryFailure, InvalidInputError);
a bug in the caller (a wrong type) comes out unchanged, so it is never retried forever."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio.error import S3Error

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.ports import free_port

pytestmark = pytest.mark.integration


def test_missing_key_is_not_found(object_store: ObjectStore, tmp_path: Path) -> None:
    missing: list[Callable[[], Any]] = [
        lambda: object_store.get_bytes("no/such.bin"),
        lambda: object_store.get_json("no/such.json"),
        lambda: object_store.digest("no/such.bin"),
        lambda: object_store.get_file("no/such.bin", str(tmp_path / "out.bin")),
        lambda: object_store.copy("no/such.bin", "dst.bin"),
    ]
    for call in missing:
        with pytest.raises(NotFoundError, match=r"no/such\.\w+: NoSuchKey"):
            call()
    assert object_store.exists("no/such.bin") is False
    assert object_store.list_keys("") == []


def test_json_too_large_or_too_deep_is_invalid_input(object_store: ObjectStore) -> None:
    """`get_json` reads at most `limit` bytes, and a document nested past the parser's
    recursion limit is InvalidInputError like any non-JSON one (before: RecursionError,
    which no caller handles)."""
    object_store.put_bytes("deep.json", b"[" * 200_000, "application/json")
    with pytest.raises(InvalidInputError, match=r"deep\.json: not JSON: RecursionError"):
        object_store.get_json("deep.json")
    object_store.put_bytes("big.json", b'{"a": "' + b"x" * 2000 + b'"}', "application/json")
    with pytest.raises(InvalidInputError, match=r"big\.json: larger than 1000 bytes"):
        object_store.get_json("big.json", limit=1000)
    assert object_store.get_json("big.json", limit=4000)["a"] == "x" * 2000


def test_missing_bucket_is_not_found(s3_server: S3Settings) -> None:
    store = ObjectStore(dataclasses.replace(s3_server, bucket="vt-never-created"))
    with pytest.raises(NotFoundError, match="NoSuchBucket"):
        store.list_keys("")
    with pytest.raises(NotFoundError, match="NoSuch"):
        store.get_bytes("a.bin")


def test_unreachable_endpoint_is_temporary(s3_server: S3Settings) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = ObjectStore(dataclasses.replace(s3_server, endpoint=closed))
    started = time.monotonic()
    for call in (lambda: store.get_bytes("a.bin"), lambda: store.put_bytes("a.bin", b"x"),
                 lambda: store.exists("a.bin"), store.ensure_bucket):
        with pytest.raises(TemporaryFailure, match="unreachable") as info:
            call()
        assert info.value.delay > 0
    assert time.monotonic() - started < 30  # urllib3's retries, not a hang


def test_wrong_credentials_are_temporary_and_named(object_store: ObjectStore) -> None:
    object_store.put_bytes("a.bin", b"hello")
    for field in ("secret_key", "access_key"):
        wrong = ObjectStore(dataclasses.replace(object_store.settings,
                                                **{field: "wrong-" + field}))
        with pytest.raises(TemporaryFailure, match="credentials") as info:
            wrong.get_bytes("a.bin")
        assert "VOICETRACK_S3_ACCESS_KEY" in str(info.value)
    assert object_store.get_bytes("a.bin") == b"hello"


def test_invalid_bucket_name_is_input_error(s3_server: S3Settings) -> None:
    # checked when the store is built: bad settings, not a retry on every call
    with pytest.raises(InvalidInputError, match="Bad_Bucket"):
        ObjectStore(dataclasses.replace(s3_server, bucket="Bad_Bucket!"))


def test_bugs_propagate_unchanged(object_store: ObjectStore, tmp_path: Path) -> None:
    """Fails before the fix: every one of these came out as TemporaryFailure."""
    bad: dict[str, tuple[type[BaseException], Callable[[], Any]]] = {
        "None data": (TypeError, lambda: object_store.put_bytes("a.bin", None)),  # type: ignore[arg-type]
        "int key": (TypeError, lambda: object_store.get_bytes(42)),  # type: ignore[arg-type]
        "int prefix": (TypeError, lambda: object_store.list_keys(7)),  # type: ignore[arg-type]
        "missing local file": (
            FileNotFoundError,
            lambda: object_store.put_file("a.bin", str(tmp_path / "absent.bin")),
        ),
    }
    for name, (kind, call) in bad.items():
        with pytest.raises(Exception) as info:
            call()
        assert not isinstance(info.value, TemporaryFailure), (name, info.value)
        assert isinstance(info.value, kind), (name, info.value)


def test_concurrent_calls_reuse_their_connections(object_store: ObjectStore,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The operator and the promotion Job call one store from many threads (the operator's
    API pool, assembly's 8 fetchers): each thread's connection goes back to the pool.
    With urllib3's default pool of one connection per host, every call but one opened a
    new TCP connection and threw it away ("Connection pool is full, discarding
    connection")."""
    from concurrent.futures import ThreadPoolExecutor

    for i in range(8):
        object_store.put_bytes(f"pool/{i}.bin", bytes([i]) * 1024, "application/octet-stream")
    with caplog.at_level("WARNING", logger="urllib3.connectionpool"), \
            ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            got = list(pool.map(object_store.get_bytes, [f"pool/{i}.bin" for i in range(8)]))
            assert [g[0] for g in got] == list(range(8))
    full = [r for r in caplog.records if "pool is full" in r.getMessage()]
    assert not full, f"{len(full)} connections discarded: {full[0].getMessage()}"


def test_a_raw_object_larger_than_its_chunk_says_is_refused_unread(
        object_store: ObjectStore) -> None:
    """A raw object overwritten through the recorder's grant may be up to the session's
    `limits.maxBytes` (2 GB): the promotion read it whole and was OOMKilled (exit 137, a
    transient failure: retried for ever). Now at most `track.bytes` + 1 bytes are read and
    the chunk fails on its input (exit 2, left out by the operator). Before: the 3 MiB
    object was read whole and failed later (or, at 2 GB, never)."""
    from voicetrack.chunkspec import ChunkSpec, ChunkTrack
    from voicetrack.errors import ChunkInputError
    from voicetrack.objectstore import sha256_hex
    from voicetrack_transcoder.rawtracks import fetch_raw

    key = "recordings/300000000000000001/abcdef0123456789/chunks/000003/400000000000000001.opus"
    genuine = b"OggS" + b"\x00" * 996
    track = ChunkTrack(user_id="400000000000000001", key=key, frames=1, first_ms=0,
                       last_ms=0, bytes=len(genuine), sha256=sha256_hex(genuine))
    chunk = ChunkSpec(session_name="s", meeting_id="abcdef0123456789",
                      guild_id="300000000000000001", index=3, start_ms=0, end_ms=20,
                      tracks=[track])
    object_store.put_bytes(key, genuine)
    assert fetch_raw(object_store, chunk, track) == genuine
    object_store.put_bytes(key, b"\x01" * (3 << 20))
    with pytest.raises(ChunkInputError, match="larger than the chunk's 1000 bytes") as info:
        fetch_raw(object_store, chunk, track)
    assert info.value.index == 3
    with pytest.raises(InvalidInputError, match="larger than 10 bytes"):
        object_store.get_bytes(key, limit=10)
    assert len(object_store.get_bytes(key, limit=3 << 20)) == 3 << 20


class RefusesUploadListing:
    """The real minio client of a store, except that ListMultipartUploads is refused as a
    store answering 501 NotImplemented (or a policy without
    s3:ListBucketMultipartUploads, 403) refuses it."""

    def __init__(self, client: Any, code: str, status: int) -> None:
        self._client, self._code, self._status = client, code, status

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _list_multipart_uploads(self, *args: Any, **kwargs: Any) -> Any:
        raise S3Error(urllib3.HTTPResponse(status=self._status), self._code, "refused",
                      "/", "request", "host")


@pytest.mark.parametrize(("code", "status"), [("NotImplemented", 501), ("AccessDenied", 403)])
def test_a_store_refusing_the_upload_listing_still_deletes_the_objects(
        object_store: ObjectStore, code: str, status: int) -> None:
    """`delete_prefix` deletes the objects first and only then aborts incomplete uploads,
    best effort: a store or policy that refuses ListMultipartUploads is logged and the
    objects (a withheld member's live audio) are gone all the same. (Before: the refusal
    raised TemporaryFailure before a single object was deleted, on every try.)"""
    keys = [f"m/live/{name}" for name in ("u.mp3", "mix.mp3")]
    for key in keys:
        object_store.put_bytes(key, b"audio")
    object_store.put_bytes("m/final/kept.mp3", b"final")
    refusing = ObjectStore(object_store.settings)
    refusing.client = RefusesUploadListing(refusing.client, code, status)  # type: ignore[assignment]
    assert refusing.delete_prefix("m/live/") == 2
    assert object_store.list_keys("m/") == ["m/final/kept.mp3"]
    assert refusing.abort_uploads("m/") == 0
