"""A recorder container that dies with chunks in its spool loses none of them (audio loss).

The spool lives in the pod's emptyDir, which survives a container restart. The recorder
deleted it at start, so chunks sealed during an S3 outage and not yet uploaded when the
container died (a crash, an OOM kill, a failed liveness probe: no flush) became part of the
next run's `recorder-restart` gap although their files were on disk. Now the next run
re-adopts them: uploaded first, with their own indices and windows, and the restart gap
starts where the last of them ends.

Same rig as tests/disruptive/test_recorder_outages.py (the local control plane with the
CRDs and no operator, a SeaweedFS of the test's own stopped and started again on the same
ports, a source sending a real Opus packet every 20 ms). The first run is a child process
(`python -m tests.disruptive.test_recorder_spool_restart`) the test SIGKILLs: nothing of
its stop path runs. The second run, in the test, shares its spool directory and ack file,
as the next container of the same pod does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.disruptive import test_recorder_outages as outages
from tests.disruptive.test_recorder_outages import (
    TickSource,
    new_session,
    restart_weed,
    wait_async,
    wait_until,
)
from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import ChunkSpec
from voicetrack.kubeclient import load_api_client
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack.resources import SessionSpec
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.seaweed import SeaweedServer
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.main import meeting_id_of, session_layout
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader, read_acked

pytestmark = [pytest.mark.disruptive, pytest.mark.timeout(150)]

crds = outages.crds
weed = outages.weed
"""The outage tests' fixtures: the CRDs installed; a SeaweedFS of the test's own."""

NAME = "spool-restart"
SPEC_FILE = "chunk.json"
"""A spooled chunk's spec, next to its files (`voicetrack_recorder.spool.SPEC_FILE`)."""


def build_at(kubeconfig: str, ns: str, s3: S3Settings, tmp: Path, started_at_ms: int
             ) -> tuple[Recorder, ObjectStore]:
    """The recorder of session `ns/NAME` as main.py wires it, on the session clock that
    starts at `started_at_ms` (Unix ms); spool `tmp/spool/NAME`, acks `tmp/acks.json`."""
    kube = RecorderKube(load_api_client(kubeconfig), ns, NAME)
    obj = kube.get_session()
    spec = SessionSpec.model_validate(obj["spec"])
    store = ObjectStore(dataclasses.replace(s3, bucket=spec.storage.bucket))
    spool = Spool(tmp / "spool" / NAME, 1 << 30, session_layout(spec, meeting_id_of(obj)),
                  NAME, spec.storage.raw_format)
    uploader = ChunkUploader(store, kube, spool, obj["metadata"]["uid"],
                             ack_file=str(tmp / "acks.json"))
    kube.paused = False
    return Recorder(kube, uploader, spec, SessionClock(started_at_ms)), store


async def child(kubeconfig: str, ns: str, s3: S3Settings, tmp: Path, started_at_ms: int
                ) -> None:
    """The first run: record until killed."""
    recorder, store = build_at(kubeconfig, ns, s3, tmp, started_at_ms)
    await asyncio.to_thread(store.ensure_bucket)
    await recorder.prepare()
    await recorder.run(TickSource(recorder, recorder.clock))


def spawn_child(cluster: LocalCluster, ns: str, s3: S3Settings, tmp: Path,
                started_at_ms: int) -> subprocess.Popen[bytes]:
    args = json.dumps([str(cluster.kubeconfig), ns, dataclasses.asdict(s3), str(tmp),
                       started_at_ms])
    with (tmp / "child.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.disruptive.test_recorder_spool_restart", args],
            cwd=Path(__file__).resolve().parents[2], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)


def spooled_specs(root: Path) -> dict[int, ChunkSpec]:
    """The specs of the chunks the spool at `root` holds, by index."""
    return {int(p.parent.name): ChunkSpec.model_validate(json.loads(p.read_text()))
            for p in root.glob(f"*/{SPEC_FILE}")}


@pytest.mark.parametrize("created", [False, True], ids=["spooled", "created-before-crash"])
async def test_a_killed_recorder_s_spooled_chunks_are_uploaded_by_the_next_run(
        created: bool, cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """Chunk 0 arrives; S3 goes down; chunks 1 and 2 are sealed into the spool; the
    recorder is SIGKILLed; S3 comes back; the next run uploads 1 and 2 with their original
    indices and windows before its own chunks, and its `recorder-restart` gap starts where
    chunk 2 ends. `created-before-crash`: chunk 1's RecordingChunk was created before the
    kill (a crash between the create and the removal of its files): it is not uploaded
    twice, acknowledged once, and the run does not fail. Before: the next run deleted the
    spool, chunk 1 had index 1 but carried a `recorder-restart` gap from chunk 0's end."""
    new_session(kubectl, namespace, NAME)
    assert weed.settings is not None
    settings = weed.settings
    started = int(time.time() * 1000)
    proc = spawn_child(cluster, namespace, settings, tmp_path, started)
    root = tmp_path / "spool" / NAME
    try:
        wait_until("chunk 0 acknowledged by the first run",
                   lambda: read_acked(str(tmp_path / "acks.json")) == [0], 40)
        weed.stop()
        wait_until("chunks 1 and 2 spooled while S3 is down",
                   lambda: (root / "000002").is_dir() and proc.poll() is None, 30)
        time.sleep(1.0)  # chunk 2's files written (milliseconds), chunk 3 not sealed yet
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no flush, no marker
        proc.wait(10)
    assert read_acked(str(tmp_path / "acks.json")) == [0], (tmp_path / "child.log").read_text()
    assert {"000001", "000002"} <= {p.name for p in root.iterdir()}
    left = spooled_specs(root)  # what the first run sealed and did not upload
    restart_weed(weed, settings)

    recorder, store = build_at(str(cluster.kubeconfig), namespace, settings, tmp_path,
                               started)
    if created:  # its objects in S3 and its RecordingChunk, then the crash
        for key, path in recorder.uploader.spool.adopted[0].files.items():
            store.put_file(key, path)
        recorder.kube.create_chunk(left[1], recorder.uploader.session_uid)
    await recorder.prepare()
    queued = [c.spec for c in recorder._pending]
    next_index, gap = recorder.chunker.next_index, recorder.chunker.gap
    run = asyncio.create_task(recorder.run(TickSource(recorder, recorder.clock)))
    stats = recorder.uploader.stats
    await wait_async("chunk 3 acknowledged", lambda: 3 in stats.acked, 30)
    recorder.stop.set()
    result = await asyncio.wait_for(run, 60)

    assert result.error is None and result.reason == "stopped", result
    chunks = recorder.kube.list_chunks()
    indices = [c.index for c in chunks]
    assert indices == stats.acked == list(range(len(chunks))) and len(chunks) >= 4, (
        indices, stats.acked)
    assert all(a.end_ms == (b.gap.start_ms if b.gap else b.start_ms)
               for a, b in itertools.pairwise(chunks))
    gaps = [(c.index, c.gap.start_ms, c.gap.end_ms, c.gap.cause) for c in chunks if c.gap]
    assert gaps == [(3, chunks[2].end_ms, chunks[3].start_ms, "recorder-restart")], gaps
    assert chunks[1] == left[1] and chunks[2] == left[2]  # original indices and windows
    assert queued == [left[i] for i in ([2] if created else [1, 2])]
    assert next_index == 3 and gap is not None and gap.start_ms == left[2].end_ms
    assert stats.lost == []
    for chunk in chunks:
        assert chunk.tracks
        for track in chunk.tracks:
            assert sha256_hex(store.get_bytes(track.key)) == track.sha256
    assert recorder.uploader.spool.used == 0 and not any(root.iterdir())


if __name__ == "__main__":
    kubeconfig, ns, s3, tmp, started_at_ms = json.loads(sys.argv[1])
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(child(kubeconfig, ns, S3Settings(**s3), Path(tmp), started_at_ms))
