"""The recorder's Kubernetes calls against an API server that accepts and never answers (a
half-open flow behind a load balancer): each call ends within its timeout as a
TemporaryFailure, so an upload gives up at its stop deadline plus one timeout, and a
session watch whose stream never sends ends and is re-opened (a pause made meanwhile is
seen). Before the fix no RecorderKube call passed a timeout: each waited for good.

The API server is a loopback socket; timeouts are shortened through `RecorderKube`'s
`timeouts` setting (`ApiTimeouts`), the production defaults being seconds longer."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import client

from tests.unit.recorder_rig import LAYOUT, chunk_of, sine_packet
from tests.unit.test_recorder_kube import chunk_spec
from tests.unit.test_uploader_access_denied import Written
from voicetrack.errors import TemporaryFailure
from voicetrack.kubeclient import translate_api_error
from voicetrack_recorder.kube import API_TIMEOUTS, ApiTimeouts, RecorderKube
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = pytest.mark.unit

FAST = ApiTimeouts(connect_s=1.0, read_s=1.0, watch_s=1, watch_read_s=2.0)
SLACK_S = 1.5
"""Scheduling slack on a shared machine."""


def run_bounded(fn: Callable[[], object], limit_s: float) -> tuple[BaseException | None, float]:
    """Run `fn` in a daemon thread for up to `limit_s`; (what it raised, seconds taken).
    Fails the test when it is still running then (the fault: a call that never ends)."""
    outcome: list[BaseException | None] = []

    def body() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    began = time.monotonic()
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(limit_s)
    taken = time.monotonic() - began
    assert not thread.is_alive(), f"still waiting on the API server after {limit_s:.1f} s"
    return outcome[0], taken


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A loopback API server whose kernel accepts connections (the backlog) and that never
    answers; closing it resets them, which frees a call that did not time out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def kube_for(host: str) -> RecorderKube:
    # retries left unset, as `load_api_client` leaves them
    return RecorderKube(client.ApiClient(client.Configuration(host=host)), "rec", "standup",
                        timeouts=FAST)


def test_the_defaults_bound_a_call_and_outlast_a_quiet_watch() -> None:
    # while recording, a loaded API server gets its time; once the flush deadline is armed
    # an attempt under way must end inside the termination grace
    assert API_TIMEOUTS.read_s >= 10
    assert API_TIMEOUTS.connect_s + API_TIMEOUTS.stopping().read_s <= 10
    assert API_TIMEOUTS.stopping().request == (API_TIMEOUTS.connect_s,
                                               API_TIMEOUTS.stop_read_s)
    assert API_TIMEOUTS.watch_read_s > API_TIMEOUTS.watch_s
    with pytest.raises(ValueError, match="watch_read_s"):
        ApiTimeouts(watch_s=30, watch_read_s=30)


def test_a_read_timeout_is_a_temporary_failure() -> None:
    err = urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out.")  # type: ignore[arg-type]
    assert isinstance(translate_api_error(err, "get RecordingChunk x"), TemporaryFailure)


def test_chunk_exists_gives_up_within_its_timeout(silent_api: str) -> None:
    kube = kube_for(silent_api)
    spec = chunk_spec()
    err, taken = run_bounded(lambda: kube.chunk_exists(spec, "uid-1"),
                             FAST.read_s + SLACK_S)
    assert isinstance(err, TemporaryFailure), err
    assert "API server unreachable" in str(err)
    assert taken < FAST.read_s + SLACK_S


def test_an_upload_gives_up_at_its_deadline_plus_one_timeout(silent_api: str,
                                                              tmp_path: Path) -> None:
    """The uploader reads its deadline between attempts: the attempt under way when it
    passes ends within one read timeout; nothing is written or acknowledged, and the spool
    keeps the chunk (the caller's marker then records the window)."""
    writer = Written()
    spool = Spool(tmp_path / "spool", 1 << 24, LAYOUT, "standup")
    uploader = ChunkUploader(writer, kube_for(silent_api), spool, "uid-1",
                             str(tmp_path / "acks.json"))
    spooled = uploader.spool_chunk(chunk_of(0, 10, sine_packet()))
    deadline = time.monotonic() + 1.5
    limit = 1.5 + FAST.read_s + SLACK_S
    err, taken = run_bounded(lambda: uploader.upload(spooled, lambda: deadline), limit)
    assert isinstance(err, TemporaryFailure), err
    assert taken < limit
    assert writer.keys == [] and uploader.stats.acked == []
    assert Path(spooled.directory).is_dir()


class WatchApi:
    """A loopback API server: a GET of the session answers it (`spec.paused` true from the
    second GET on: a pause made while the watch was dead); a watch gets its headers and
    then nothing, ever (the stream of a half-open flow)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.host = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.gets = 0
        self.watches = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        self.held.append(conn)
        buf = b""
        try:
            while True:  # keep-alive: one request after another
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                if "watch=true" in line:
                    self.watches += 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    return  # and never a byte more (the socket stays open in `held`)
                self.gets += 1
                body = json.dumps({
                    "apiVersion": "voicetrack.dev/v1", "kind": "RecordingSession",
                    "metadata": {"name": "standup", "namespace": "rec", "uid": "uid-1",
                                 "resourceVersion": str(self.gets)},
                    "spec": {"paused": self.gets > 1}}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                             + body)
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def test_a_watch_that_never_sends_ends_and_the_pause_is_seen() -> None:
    """The first watch stays silent; its read timeout ends it, the loop reads the session
    again (now paused) and opens another watch."""
    api = WatchApi()
    kube = kube_for(api.host)
    stop = threading.Event()
    thread = threading.Thread(target=kube.watch_paused, args=(stop,), daemon=True)
    thread.start()
    try:
        began = time.monotonic()
        limit = FAST.watch_read_s + 1 + 2 * SLACK_S  # read timeout, the 1 s re-open wait
        while kube.paused is not True and time.monotonic() - began < limit:
            time.sleep(0.05)
        assert kube.paused is True, (f"pause not seen within {limit:.1f} s "
                                     f"({api.gets} get(s), {api.watches} watch(es))")
        assert api.watches >= 1 and api.gets >= 2
        assert not kube.deleted.is_set()
    finally:
        stop.set()
        api.close()
        thread.join(FAST.watch_read_s + SLACK_S)
    assert not thread.is_alive()
