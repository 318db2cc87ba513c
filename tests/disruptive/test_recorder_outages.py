"""The recorder through S3 and API-server outages, on real processes.

The recorder's capture loop (spool → upload → RecordingChunk) runs in the test against the
local control plane (CRDs installed, no operator, so nothing else touches the chunks) and
a SeaweedFS of its own that the test stops and restarts on the same ports; the API server
is SIGKILLed and started again with its own command line. A synthetic source pushes one
real Opus packet per 20 ms slot. Oracle: the indices the recorder acknowledged against the
RecordingChunks the API server holds and the raw objects S3 holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cluster import Kubectl
from tests.unit.recorder_rig import sine_packet
from voicetrack.chunkspec import ChunkSpec
from voicetrack.kubeclient import load_api_client
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack.resources import SessionSpec
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.ports import port_free
from voicetrack_local.procs import ProcRecord, spawn, terminate
from voicetrack_local.seaweed import SeaweedServer
from voicetrack_local.stack import install_crds
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.ending import RecorderResult
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.main import meeting_id_of, session_layout, start_pause_watch
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = pytest.mark.disruptive

GUILD = "300000000000000061"
USER = "400000000000000062"


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> None:
    install_crds(cluster.kubeconfig)


@pytest.fixture
def weed(tmp_path: Path) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path / "weed", access_key="vt-out-access",
                           secret_key="vt-out-secret")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def restart_weed(server: SeaweedServer, settings: S3Settings) -> None:
    """Start a stopped `server` again on the same ports and data (S3 comes back where the
    recorder's client points: `settings`, from before the stop)."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key,
           "AWS_SECRET_ACCESS_KEY": server.secret_key}
    with server.log_path.open("ab") as log:
        server.process = subprocess.Popen(
            server.command(), cwd=server.data_dir, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server._wait_ready(settings, 60)
    server.settings = settings


def kill_apiserver(cluster: LocalCluster) -> ProcRecord:
    """SIGKILL the cluster's kube-apiserver; returns its record (to start it again)."""
    old = ProcRecord.load(cluster.state_dir / "pids" / "kube-apiserver.json")
    assert old is not None
    terminate([old], grace=0)
    return old


def start_apiserver(cluster: LocalCluster, old: ProcRecord) -> None:
    """Start the apiserver again with `old`'s command once its port is free, and wait
    until it answers."""
    state = cluster.state_dir
    port = json.loads((state / "cluster.json").read_text())["ports"]["apiserver"]
    wait_until("the apiserver port released", lambda: port_free(port), 10)
    _, new = spawn("kube-apiserver", old.cmd, state / "logs" / "kube-apiserver.log")
    new.save(state / "pids" / "kube-apiserver.json")


def wait_until(what: str, fn: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def wait_async(what: str, fn: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


class TickSource:
    """One speaker sending a real Opus packet in every 20 ms slot, in real time."""

    def __init__(self, recorder: Recorder, clock: SessionClock) -> None:
        self.recorder = recorder
        self.clock = clock
        self.packet = sine_packet()

    async def run(self, stop: asyncio.Event) -> None:
        slot = max(self.clock.now_slot(), 0)
        while not stop.is_set():
            while slot <= self.clock.now_slot():
                self.recorder.push(USER, slot, self.packet)
                slot += 1
            await asyncio.sleep(0.02)


def new_session(kubectl: Kubectl, ns: str, name: str, **spec: Any) -> None:
    doc = {"apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"guildId": GUILD, "channelId": GUILD, "chunkSeconds": 5,
                    "source": {"type": "files", "speakers": [
                        {"userId": USER, "objectKey": "unused.wav"}]}, **spec}}
    kubectl("apply", "-f", "-", input=json.dumps(doc))


def build(cluster: LocalCluster, ns: str, name: str, s3: S3Settings, tmp: Path,
          spool_max_bytes: int = 1 << 30) -> tuple[Recorder, ObjectStore]:
    """The recorder of session `ns/name` as main.py wires it (acks in `tmp/acks.json`)."""
    kube = RecorderKube(load_api_client(str(cluster.kubeconfig)), ns, name)
    obj = kube.get_session()
    spec = SessionSpec.model_validate(obj["spec"])
    layout = session_layout(spec, meeting_id_of(obj))
    store = ObjectStore(dataclasses.replace(s3, bucket=spec.storage.bucket))
    store.ensure_bucket()
    spool = Spool(tmp / "spool" / name, spool_max_bytes, layout, name, spec.storage.raw_format)
    uploader = ChunkUploader(store, kube, spool, obj["metadata"]["uid"],
                             ack_file=str(tmp / "acks.json"))
    kube.paused = False
    return Recorder(kube, uploader, spec, SessionClock(int(time.time() * 1000))), store


def chunks_in_api(recorder: Recorder) -> list[ChunkSpec]:
    return recorder.kube.list_chunks()


def assert_gapless(recorder: Recorder, store: ObjectStore, result: RecorderResult) -> None:
    """Every acknowledged chunk is in the API and S3 (sha256 as recorded), indices and
    windows consecutive, no gap, nothing left in the spool."""
    assert result.error is None and result.reason == "stopped", result
    chunks = chunks_in_api(recorder)
    acked = recorder.uploader.stats.acked
    assert [c.index for c in chunks] == acked == list(range(len(acked))), (chunks, acked)
    assert all(c.gap is None for c in chunks), [c.gap for c in chunks]
    assert all(a.end_ms == b.start_ms for a, b in itertools.pairwise(chunks))
    for chunk in chunks:
        for track in chunk.tracks:
            assert sha256_hex(store.get_bytes(track.key)) == track.sha256
    assert recorder.uploader.spool.used == 0
    assert not any(recorder.uploader.spool.root.iterdir())


async def test_s3_down_mid_session_spools_to_disk_and_loses_nothing(
        cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """S3 stops after the first chunk: the next chunks wait on disk (not in memory), are
    retried without a count limit and all arrive once S3 is back; no gap. (Before the
    spool, waiting chunks lived only in the process's memory: no spool file existed.)"""
    new_session(kubectl, namespace, "s3-outage")
    assert weed.settings is not None
    settings = weed.settings
    recorder, store = build(cluster, namespace, "s3-outage", settings, tmp_path)
    await recorder.prepare()
    run = asyncio.create_task(recorder.run(TickSource(recorder, recorder.clock)))
    stats = recorder.uploader.stats
    await wait_async("chunk 0 acknowledged", lambda: stats.acked == [0], 20)
    await asyncio.to_thread(weed.stop)
    await wait_async("chunks 1 and 2 spooled while S3 is down",
                     lambda: [c.index for c in recorder._pending] == [1, 2], 20)
    files = [p for c in recorder._pending for p in c.files.values()]
    assert files and all(os.path.getsize(p) > 0 for p in files)
    assert stats.acked == [0] and stats.retries >= 2
    await asyncio.to_thread(restart_weed, weed, settings)
    await wait_async("chunks 1 and 2 acknowledged", lambda: stats.acked[:3] == [0, 1, 2], 30)
    recorder.stop.set()
    result = await run
    assert_gapless(recorder, store, result)
    acks = json.loads((tmp_path / "acks.json").read_text())
    assert acks == {"acked": stats.acked, "lost": []}


async def test_a_full_spool_stops_keeping_audio_and_records_the_gap(
        cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """S3 is down longer than the spool can hold (bound: about 1.5 chunks): the disk use
    stays within the bound, the windows that did not fit are dropped and the next chunk
    (taking the dropped chunk's index) carries them as a `connection-lost` gap."""
    new_session(kubectl, namespace, "spool-full")
    settings = weed.settings
    assert settings is not None
    bound = 100_000
    recorder, store = build(cluster, namespace, "spool-full", settings, tmp_path, bound)
    await recorder.prepare()
    run = asyncio.create_task(recorder.run(TickSource(recorder, recorder.clock)))
    stats = recorder.uploader.stats
    await wait_async("chunk 0 acknowledged", lambda: stats.acked == [0], 20)
    await asyncio.to_thread(weed.stop)
    await wait_async("a window dropped", lambda: bool(recorder._unsaid), 25)
    spool = recorder.uploader.spool
    on_disk = sum(p.stat().st_size for p in spool.root.rglob("*") if p.is_file())
    assert on_disk == spool.used <= bound and [c.index for c in recorder._pending] == [1]
    await asyncio.to_thread(restart_weed, weed, settings)
    await wait_async("chunk 2 acknowledged", lambda: stats.acked[:3] == [0, 1, 2], 40)
    recorder.stop.set()
    result = await run
    assert result.error is None
    chunks = chunks_in_api(recorder)
    assert [c.index for c in chunks] == stats.acked == list(range(len(chunks)))
    gaps = [(c.index, c.gap) for c in chunks if c.gap is not None]
    assert len(gaps) == 1 and gaps[0][0] == 2, gaps
    gap = gaps[0][1]
    assert gap is not None and gap.cause == "connection-lost"
    assert gap.start_ms == chunks[1].end_ms and gap.end_ms == chunks[2].start_ms
    assert gap.end_ms - gap.start_ms >= 5000
    for chunk in chunks:
        for track in chunk.tracks:
            assert sha256_hex(store.get_bytes(track.key)) == track.sha256


async def test_s3_down_at_stop_records_the_lost_window_as_a_connection_lost_gap(
        cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """S3 is down when the recorder stops: what it cannot flush within its grace is never
    dropped silently. A marker chunk without tracks (it needs no S3) carries the lost
    window as a `connection-lost` gap. (Before: the queued chunks were dropped after the
    grace period and nothing recorded why.)"""
    new_session(kubectl, namespace, "s3-at-stop")
    assert weed.settings is not None
    recorder, _ = build(cluster, namespace, "s3-at-stop", weed.settings, tmp_path)
    recorder.flush.grace_s = 3.0
    await recorder.prepare()
    run = asyncio.create_task(recorder.run(TickSource(recorder, recorder.clock)))
    stats = recorder.uploader.stats
    await wait_async("chunk 0 acknowledged", lambda: stats.acked == [0], 20)
    await asyncio.to_thread(weed.stop)
    await wait_async("chunk 1 spooled", lambda: [c.index for c in recorder._pending] == [1],
                     20)
    recorder.stop.set()
    result = await run
    assert result.reason == "stopped"
    chunks = chunks_in_api(recorder)
    assert [c.index for c in chunks] == stats.acked == [0, 1]
    first, marker = chunks
    assert marker.tracks == [] and marker.end_ms - marker.start_ms == 20
    assert marker.gap is not None and marker.gap.cause == "connection-lost"
    assert marker.gap.start_ms == first.end_ms and marker.gap.end_ms == marker.start_ms
    (lost,) = stats.lost
    assert (lost.start_ms, lost.end_ms) == (first.end_ms, marker.end_ms)
    assert "lost [" in stats.summary() and "connection-lost" in stats.summary()
    acks = json.loads((tmp_path / "acks.json").read_text())
    assert acks["acked"] == [0, 1] and acks["lost"][0]["cause"] == "connection-lost"
    assert recorder.uploader.spool.used == 0


async def test_api_server_restarts_at_start_and_mid_session_lose_nothing(
        cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """The API server is down when the recorder lists its chunks (start-up) and again while
    a chunk is being created: the recorder waits for it both times, keeps capturing and
    ends with every chunk, no gap. (Before: the start-up list raised and the recorder
    exited 1.)"""
    new_session(kubectl, namespace, "api-outage")
    assert weed.settings is not None
    recorder, store = build(cluster, namespace, "api-outage", weed.settings, tmp_path)
    watch_stop = start_pause_watch(recorder.kube)  # as main.py: it must not take the
    old = await asyncio.to_thread(kill_apiserver, cluster)  # restart for a deletion
    prepare = asyncio.create_task(recorder.prepare())
    await asyncio.sleep(3)
    assert not prepare.done()  # waiting for the API server, not exiting
    await asyncio.to_thread(start_apiserver, cluster, old)
    await asyncio.wait_for(prepare, 60)
    run = asyncio.create_task(recorder.run(TickSource(recorder, recorder.clock)))
    stats = recorder.uploader.stats
    await wait_async("chunk 0 acknowledged", lambda: stats.acked == [0], 30)
    old = await asyncio.to_thread(kill_apiserver, cluster)
    await wait_async("chunk 1 waiting for the API server",
                     lambda: [c.index for c in recorder._pending] == [1], 20)
    await asyncio.sleep(2)
    assert not run.done()
    await asyncio.to_thread(start_apiserver, cluster, old)
    await wait_async("chunk 1 acknowledged", lambda: stats.acked[:2] == [0, 1], 60)
    recorder.stop.set()
    result = await run
    watch_stop.set()
    assert_gapless(recorder, store, result)
    assert not recorder.kube.deleted.is_set()


# A bucket name S3 cannot have is refused by the API server before any recorder runs
# (tests/e2e/test_crd_validation.py); the recorder's own check stays for older CRDs.
@pytest.mark.parametrize("fault", ["bad-s3-secret", "no-discord-token"])
def test_bad_input_exits_2_with_its_reason_in_the_termination_message(
        fault: str, cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """Refused S3 credentials and a missing bot token end
    the recorder at once with exit code 2 and a one-line reason in the termination message
    file (the operator sets the session Failed with it). (Before: refused credentials were
    a TemporaryFailure, exit 1, the pod restarted for ever; no termination message.)"""
    spec: dict[str, Any] = {
        "bad-s3-secret": {},
        "no-discord-token": {"source": {"type": "discord"}}}[fault]
    new_session(kubectl, namespace, "bad-input", **spec)
    assert weed.settings is not None
    s3 = weed.settings.env()
    if fault == "bad-s3-secret":
        s3["VOICETRACK_S3_SECRET_KEY"] = "not-the-secret"
    term = tmp_path / "termination-log"
    env = {k: v for k, v in os.environ.items() if k != "VOICETRACK_DISCORD_TOKEN"}
    env.update(s3, KUBECONFIG=str(cluster.kubeconfig), VOICETRACK_NAMESPACE=namespace,
               VOICETRACK_SESSION_NAME="bad-input", TMPDIR=str(tmp_path),
               VOICETRACK_SESSION_STARTED_AT_MS=str(int(time.time() * 1000)),
               VOICETRACK_TERMINATION_LOG=str(term))
    exe = Path(sys.executable).parent / "voicetrack-recorder"
    proc = subprocess.run([str(exe), "run"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = term.read_text()
    assert "\n" not in message and message.startswith("invalid input: ")
    expected = {"bad-s3-secret": "storage: AccessDenied",
                "no-discord-token": "VOICETRACK_DISCORD_TOKEN"}[fault]
    assert expected in message, message
