"""`ChunkUploader.upload` when the API server refuses the recorder (401: its ServiceAccount
is gone; 403: its Role or RoleBinding is), as after a `--cascade=foreground` deletion of
its session, or is away (503): at a forced end the chunk goes to S3 only (raw tracks and
`chunk.json`, each written once) and is acknowledged; before the end is forced it is
retried and kept in the spool. Before the fix every such chunk was retried until the stop
deadline and given up.

The API server is a loopback HTTP server answering every request with the status under
test (the Kubernetes client's real request path); the raw writer records what it is
given (the `RawWriter` protocol, S3 itself is `tests/e2e/test_recorder_identity_gone`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.unit.loopback_api import loopback_api, status_doc
from tests.unit.recorder_rig import LAYOUT, chunk_of, sine_packet
from voicetrack.errors import TemporaryFailure
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = pytest.mark.unit


class Api:
    """What the loopback API server answers: `get` and `post` statuses; `seen` requests."""

    def __init__(self, get: int, post: int) -> None:
        self.get, self.post = get, post
        self.seen: list[str] = []


@pytest.fixture
def api() -> Iterator[tuple[Api, str]]:
    state = Api(401, 401)

    def answer(method: str, path: str) -> tuple[int, dict[str, Any]]:
        code = state.get if method == "GET" else state.post
        return code, status_doc(code)

    with loopback_api(answer) as (seen, url):
        state.seen = seen
        yield state, url


class Written:
    """A RawWriter that records each key it is given."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def put_file(self, key: str, path: str,
                 content_type: str = "application/octet-stream") -> None:
        assert Path(path).is_file()
        self.keys.append(key)


def uploader_for(host: str, tmp_path: Path) -> tuple[ChunkUploader, Written]:
    kube = RecorderKube(client.ApiClient(client.Configuration(host=host)), "rec", "standup")
    writer = Written()
    spool = Spool(tmp_path / "spool", 1 << 24, LAYOUT, "standup")
    return ChunkUploader(writer, kube, spool, "uid-1", str(tmp_path / "acks.json")), writer


@pytest.mark.parametrize(("get", "post"), [(401, 401), (403, 403), (404, 401), (404, 403),
                                           (503, 503), (404, 503)])
def test_a_forced_end_refused_by_the_api_keeps_the_chunk_in_s3_only(
        api: tuple[Api, str], tmp_path: Path, get: int, post: int) -> None:
    """Refused at the read (`get` 401/403, or 503: the API server away) or only at the
    create (`get` 404: no chunk yet, then `post` refused or 503): either way each object
    is written once and the chunk is acknowledged at once, its spool files removed (the
    pod's spool goes with it). Before, an API server away at the forced end gave every
    spooled chunk up, though S3 was there."""
    state, host = api
    state.get, state.post = get, post
    uploader, written = uploader_for(host, tmp_path)
    if 503 in (get, post):  # the API away: S3 only once the session is being deleted
        uploader.kube.deleted.set()
    spooled = uploader.spool_chunk(chunk_of(3, 10, sine_packet()))
    began = time.monotonic()
    spec = uploader.upload(spooled, lambda: time.monotonic() + 30, lambda: True)
    assert time.monotonic() - began < 2  # no retry, no backoff
    assert written.keys == [*(t.key for t in spec.tracks), LAYOUT.chunk_manifest_key(3)]
    assert uploader.stats.acked == [3] and uploader.stats.retries == 0
    assert not Path(spooled.directory).exists()
    posts = [r for r in state.seen if r.startswith("POST")]
    assert len(posts) == (1 if get == 404 else 0)  # no create tried without a read


def test_the_api_away_at_a_drain_is_retried_not_s3_only(
        api: tuple[Api, str], tmp_path: Path) -> None:
    """SIGTERM while the session lives (a drained node, a pod deleted by hand): an API
    server away (503) is retried until the deadline, not taken as S3 only, since the pod
    that replaces this one resumes after the last RecordingChunk and would reuse (and
    overwrite) that index (second review)."""
    state, host = api
    state.get = state.post = 503
    uploader, written = uploader_for(host, tmp_path)
    spooled = uploader.spool_chunk(chunk_of(0, 10, sine_packet()))
    deadline = time.monotonic() + 1.2
    with pytest.raises(TemporaryFailure):
        uploader.upload(spooled, lambda: deadline, lambda: True)
    assert written.keys == [] and uploader.stats.acked == []
    assert Path(spooled.directory).is_dir()


def test_before_the_end_is_forced_a_refusal_is_retried_and_the_spool_keeps_it(
        api: tuple[Api, str], tmp_path: Path) -> None:
    """Not forced (an error end restarts the container, whose next run resumes after the
    last RecordingChunk and would reuse an index acknowledged in S3 only): the refusal is
    retried until the deadline and nothing is acknowledged."""
    _, host = api
    uploader, written = uploader_for(host, tmp_path)
    spooled = uploader.spool_chunk(chunk_of(0, 10, sine_packet()))
    deadline = time.monotonic() + 1.2
    with pytest.raises(TemporaryFailure):
        uploader.upload(spooled, lambda: deadline, lambda: False)
    assert written.keys == [] and uploader.stats.acked == []
    assert uploader.stats.retries >= 1
    assert Path(spooled.directory).is_dir()
