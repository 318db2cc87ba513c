"""A recorder whose session reuses an earlier session's name (review finding, fault A).

The bot names every session of a guild `g-<guild>`. After a session is promoted, the garbage
collector deletes its RecordingChunks in the background (hundreds of them for an hour: tens
of seconds to minutes), while `/record start` creates the next `g-<guild>` at once. Its
recorder listed the chunks by the session label only, so it continued after the earlier
session's last chunk: index `old_last + 1`, and a first window opened at that chunk's end,
an hour ahead of its clock, where every frame was dropped as late while the session showed
Recording. Creating a chunk whose name an old chunk still held met a 409 read as another's
object (InvalidInputError: the session Failed); and one labelled object whose spec did not
parse made `prepare` raise at every start.

On the local control plane (CRDs installed, no operator): the earlier namesake's chunks are
owned by `owner_reference("s", OLD_UID)`, and carry a test finalizer, so the real garbage
collector marks them deleted (their owner uid is gone) but cannot remove them until the
test lets it: "deleted, awaiting the garbage collector", held as long as the test needs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from tests.e2e.test_chunk_crd_parity import store_before_the_opt_out_rule
from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import ChunkSpec, ChunkTrack, OptOut
from voicetrack.errors import TemporaryFailure
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MeetingLayout
from voicetrack.names import chunk_name, owner_reference
from voicetrack.resources import (
    API_VERSION,
    CHUNK_KIND,
    CHUNK_PLURAL,
    GROUP,
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    SESSION_KIND,
    SESSION_PLURAL,
    VERSION,
    SessionSpec,
)
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.main import start_pause_watch
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GUILD, CHANNEL, USER = "300000000000000111", "300000000000000112", "400000000000000113"
OLD_MEETING, MEETING = "0123456789abcdef", "fedcba9876543210"
OLD_UID = "5e551011-0000-4000-8000-0000000000aa"
"""The earlier namesake's uid: no object has it any more."""
HOLD = "test.voicetrack.dev/hold"
"""A finalizer that keeps the garbage collector from removing the old chunks."""
HOUR_MS = 3_600_000
CLOCK_MS = 60_000
"""The new session's clock at the test's start: one minute in."""


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> None:
    install_crds(cluster.kubeconfig)


def chunk_doc(spec: ChunkSpec, owner_uid: str) -> dict[str, Any]:
    """A RecordingChunk of session `spec.session_name` owned by uid `owner_uid`, as the
    recorder writes it, held by the HOLD finalizer."""
    return {"apiVersion": API_VERSION, "kind": CHUNK_KIND,
            "metadata": {"name": chunk_name(spec.session_name, spec.index),
                         "labels": {LABEL_SESSION: spec.session_name,
                                    LABEL_COMPONENT: "chunk",
                                    LABEL_CHUNK_INDEX: str(spec.index)},
                         "finalizers": [HOLD],
                         "ownerReferences": [owner_reference(spec.session_name, owner_uid)]},
            "spec": spec.to_api()}


def old_chunk(index: int) -> ChunkSpec:
    """Chunk `index` (0-2) of the earlier `s`: 10 s windows, the last ending at one hour."""
    start = HOUR_MS - (3 - index) * 10_000
    return ChunkSpec(session_name="s", meeting_id=OLD_MEETING, guild_id=GUILD, index=index,
                     start_ms=start, end_ms=start + 10_000)


@pytest.fixture
def namesake(cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl
             ) -> Iterator[tuple[client.ApiClient, str]]:
    """The new session `s` (its uid is returned with the admin client) beside chunks 0-2
    of an earlier `s` (OLD_UID). Every HOLD finalizer is released at the end, so the
    namespace can go."""
    api = load_api_client(str(cluster.kubeconfig))
    objects = client.CustomObjectsApi(api)
    obj = cast(dict[str, Any], objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, SESSION_PLURAL,
        {"apiVersion": API_VERSION, "kind": SESSION_KIND, "metadata": {"name": "s"},
         "spec": {"guildId": GUILD, "channelId": CHANNEL, "chunkSeconds": 5}}))
    for i in range(3):
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, CHUNK_PLURAL,
                                                chunk_doc(old_chunk(i), OLD_UID))
    try:
        yield api, str(obj["metadata"]["uid"])
    finally:
        names = kubectl("-n", namespace, "get", "recchunk", "-o", "name").stdout.split()
        for name in names:
            kubectl("-n", namespace, "patch", name, "--type=merge", "-p",
                    json.dumps({"metadata": {"finalizers": None}}), check=False)


def new_recorder(api: client.ApiClient, namespace: str, uid: str, tmp_path: Path
                 ) -> Recorder:
    """The new session's Recorder as main.py wires it (no S3: no chunk here has tracks),
    its clock CLOCK_MS into the session."""
    kube = RecorderKube(api, namespace, "s")
    assert kube.get_session()["metadata"]["uid"] == uid
    kube.paused = False
    spool = Spool(tmp_path / "spool", 1 << 30, MeetingLayout(
        prefix="recordings", guild_id=GUILD, meeting_id=MEETING), "s")
    uploader = ChunkUploader(cast(Any, None), kube, spool, uid,
                             ack_file=str(tmp_path / "acked.json"))
    spec = SessionSpec(guild_id=GUILD, channel_id=CHANNEL, chunk_seconds=5)
    return Recorder(kube, uploader, spec, SessionClock(int(time.time() * 1000) - CLOCK_MS))


def wait_until(what: str, fn: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def is_gone(kubectl: Kubectl, namespace: str, name: str) -> bool:
    return kubectl("-n", namespace, "get", "recchunk", name, check=False).returncode != 0


async def test_a_new_session_starts_fresh_beside_its_namesakes_leftover_chunks(
        namesake: tuple[client.ApiClient, str], namespace: str, tmp_path: Path) -> None:
    """Before: chunk index 3 next, and the first window opened at 3 600 000 ms (the old
    last chunk's end), an hour ahead of the clock."""
    api, uid = namesake
    rec = new_recorder(api, namespace, uid, tmp_path)
    origin = await rec.prepare()
    assert rec.chunker.next_index == 0
    start = rec.chunker.start_slot
    assert start is not None and CLOCK_MS <= start * 20 <= CLOCK_MS + 10_000, start
    assert rec.chunker.gap is None  # a fresh start: nothing before it to carry
    assert origin == start
    assert rec.kube.list_chunks() == []
    assert rec.push(USER, start + 1, b"\xfc\x01")  # a frame now is recorded, not late


async def test_a_chunk_name_held_by_the_namesake_waits_for_the_garbage_collector(
        namesake: tuple[client.ApiClient, str], namespace: str, kubectl: Kubectl,
        tmp_path: Path) -> None:
    """Before: the 409 on `s-chunk-000000` (the old chunk 0) was an InvalidInputError, so
    the upload loop failed and the recorder exited 2 (session Failed)."""
    api, uid = namesake
    kube = new_recorder(api, namespace, uid, tmp_path).kube
    spec = ChunkSpec(session_name="s", meeting_id=MEETING, guild_id=GUILD, index=0,
                     start_ms=CLOCK_MS, end_ms=CLOCK_MS + 5000)
    with pytest.raises(TemporaryFailure, match=r"earlier session named s.*garbage collector"):
        kube.create_chunk(spec, uid)
    # the garbage collector has it (its owner uid is gone); release our hold: it goes
    name = chunk_name("s", 0)
    wait_until("the garbage collector deleting the old chunk 0 (it finds new CRDs within "
               "30 s)", lambda: json.loads(
        kubectl("-n", namespace, "get", "recchunk", name, "-o", "json").stdout
    )["metadata"].get("deletionTimestamp"), 60)
    kubectl("-n", namespace, "patch", "recchunk", name, "--type=merge", "-p",
            json.dumps({"metadata": {"finalizers": None}}))
    wait_until("the old chunk 0 gone", lambda: is_gone(kubectl, namespace, name))
    kube.create_chunk(spec, uid)
    assert kube.list_chunks() == [spec]  # the old chunks 1 and 2 are still there, not ours


async def test_a_labelled_chunk_that_does_not_parse_is_skipped(
        namesake: tuple[client.ApiClient, str], namespace: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, cluster: LocalCluster, kubectl: Kubectl) -> None:
    """A chunk the model refuses (a track with packets after its speaker's opt-out),
    stored before the CRD had that rule, labelled and owned as ours: `prepare` skips it
    with a warning. Before: its ValidationError, not a TemporaryFailure, went out of
    `prepare` at every start (a crash loop)."""
    api, uid = namesake
    doc = chunk_doc(ChunkSpec(session_name="s", meeting_id=MEETING, guild_id=GUILD,
                              index=7, start_ms=0, end_ms=5000), uid)
    layout = MeetingLayout(prefix="recordings", guild_id=GUILD, meeting_id=MEETING)
    doc["spec"]["tracks"] = [ChunkTrack(
        user_id=USER, key=layout.raw_key(7, USER, "ogg-opus"), frames=10, first_ms=100,
        last_ms=4000, bytes=1, sha256="0" * 64).model_dump(by_alias=True, exclude_none=True)]
    doc["spec"]["optedOut"] = [OptOut(user_id=USER, since_ms=1000, via="user").model_dump(
        by_alias=True)]
    with pytest.raises(ValueError, match="at or after their opt-out"):
        ChunkSpec.model_validate(doc["spec"])
    store_before_the_opt_out_rule(cluster, kubectl, doc, namespace)
    rec = new_recorder(api, namespace, uid, tmp_path)
    with caplog.at_level(logging.WARNING, logger="voicetrack_recorder.kube"):
        await rec.prepare()
    assert rec.chunker.next_index == 0
    assert any(chunk_name("s", 7) in r.getMessage() and "does not parse" in r.getMessage()
               for r in caplog.records), caplog.text


async def test_the_session_watch_sees_a_namesake_as_the_end_of_its_session(
        namesake: tuple[client.ApiClient, str], namespace: str) -> None:
    """A recorder of the earlier `s` (still flushing) whose watch missed the DELETED event
    reads the new `s` when it re-opens: that is its session gone, not a spec to follow.
    Before: `deleted` was never set and the new session's pause and opt-outs were
    applied to the old recording."""
    api, _ = namesake
    kube = RecorderKube(api, namespace, "s")
    kube.uid = OLD_UID  # as bound by its first read, before the session was replaced
    stop = start_pause_watch(kube)
    try:
        assert kube.deleted.wait(10)
        assert kube.paused is None and kube.opt_out is None
    finally:
        stop.set()
