"""A recorder flushing its spool after its own ServiceAccount or RoleBinding is gone, as when
its session is deleted with `--cascade=foreground`: the garbage collector deletes the
session's dependents (the recorder's ServiceAccount, Role and RoleBinding among them) at
once, while the recorder still flushes on SIGTERM. The API server then answers 401 (the
token's ServiceAccount is gone) or 403 (RBAC: no RoleBinding), so no RecordingChunk can be
read or made; the raw tracks and `chunk.json` still go to S3 with the upload grant, the
chunk counts as uploaded, and the operator's inventory rebuilds it for promotion. Only when
the end is forced (SIGTERM, or the session deleted): before that a refusal is retried.

Before: `upload` read the RecordingChunk first and retried that 401/403 until the stop
deadline, so the chunk was neither in S3 nor in the API and was given up (a lost window
of silence in the final tracks: found by the cascade-foreground case of
`test_operator_faults.test_chunks_whose_objects_are_gone_are_still_promoted` in CI).

Real API server (token from a TokenRequest for the session's real recorder ServiceAccount,
RBAC from the operator's own builders), SeaweedFS, the operator's inventory; a real spool
with libopus packets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import kubeconfig_with, make_session, set_status
from tests.e2e.test_recorder_terminating_namespace import assert_in_s3
from tests.fixtures.cluster import Kubectl
from tests.unit.recorder_rig import chunk_of, sine_packet
from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import ApiAccessDenied
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MIX_TRACK
from voicetrack.manifests import FinalManifest, FinalTrack
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.cluster import LocalCluster
from voicetrack_operator.context import Context
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.deletionstate import DeletionProgress, DeletionStep
from voicetrack_operator.services.inventory import chunk_inventory
from voicetrack_operator.services.isolation import ensure_recorder_identity
from voicetrack_operator.services.sessions import SessionService
from voicetrack_recorder.chunker import SealedChunk
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx

USER = "200000000000000001"
SLOTS = 10  # 200 ms chunks: their windows stay within the session's elapsed time
DEADLINE_S = 10.0


def refusal(kube: RecorderKube, spec: ChunkSpec, uid: str) -> int | None:
    """The HTTP status with which the API server refuses the recorder now (once the
    deletion has reached the authenticator's or the authorizer's cache), else None."""
    try:
        kube.chunk_exists(spec, uid)
    except ApiAccessDenied as err:
        assert isinstance(err.__cause__, ApiException)
        return int(err.__cause__.status)
    return None


@pytest.mark.parametrize(("gone", "status"), [("serviceaccount", 401),
                                              ("rolebinding", 403)])
async def test_a_recorder_refused_by_the_api_while_stopping_gets_its_chunks_into_s3(
        gone: str, status: int, ctx: Context, cluster: LocalCluster, s3_server: S3Settings,
        namespace: str, kubectl: Kubectl, tmp_path: Path) -> None:
    s = await make_session(ctx, kubectl, namespace, "bereft")
    account = await ensure_recorder_identity(ctx, s.ref)
    token = kubectl("-n", namespace, "create", "token", account,
                    "--duration=15m").stdout.strip()
    api = load_api_client(kubeconfig_with(cluster, tmp_path, token=token))
    kube = RecorderKube(api, s.ref.namespace, s.ref.name, s.ref.uid)
    time.sleep(1)  # the chunks' windows end 600 ms after the session's start
    spool = Spool(tmp_path / "spool", 1 << 30, s.layout, s.ref.name, "ogg-opus")
    spooled = [spool.add(chunk_of(i, SLOTS, sine_packet(), user=USER)) for i in (0, 1)]
    spooled.append(spool.add(SealedChunk(index=2, start_ms=2 * SLOTS * 20,
                                         end_ms=3 * SLOTS * 20, gap=None, tracks=[])))
    uploader = ChunkUploader(ObjectStore(s3_server), kube, spool, s.ref.uid,
                             ack_file=str(tmp_path / "acks.json"))
    uploader.upload(spooled[0])  # while the identity is there: a RecordingChunk
    assert kube.chunk_exists(spooled[0].spec, s.ref.uid)

    kubectl("-n", namespace, "delete", gone, account)
    until = time.monotonic() + 30
    while (got := refusal(kube, spooled[1].spec, s.ref.uid)) is None:
        assert time.monotonic() < until, f"the API server still takes the token without {gone}"
        time.sleep(0.2)
    assert got == status

    # before the end is forced a refusal is retried (the spool keeps the chunk: a run
    # restarted after an error end must not reuse its index); SIGTERM forces the end
    # (read once per refusal), and S3 takes it
    reads = 0

    def forced_after_one_refusal() -> bool:
        nonlocal reads
        reads += 1
        return reads > 1

    deadline = time.monotonic() + DEADLINE_S
    began = time.monotonic()
    uploader.upload(spooled[1], lambda: deadline, forced_after_one_refusal)
    uploader.upload(spooled[2], lambda: deadline, lambda: True)
    took = time.monotonic() - began
    assert uploader.stats.retries == 1, uploader.stats.retries
    assert uploader.stats.acked == [0, 1, 2]
    assert took < DEADLINE_S / 2, took  # nothing retried until the deadline
    assert not any(Path(one.directory).exists() for one in spooled)  # acknowledged

    assert_in_s3(ObjectStore(s3_server), s.layout, spooled)
    inv = await chunk_inventory(ctx, s)
    assert sorted(inv.chunks) == [0, 1, 2] and not inv.refused
    assert not inv.chunks[0].rebuilt
    assert inv.chunks[1].rebuilt and inv.chunks[2].rebuilt


async def test_a_meeting_whose_chunks_were_all_rebuilt_from_s3_is_recorded(
        ctx: Context, kubectl: Kubectl, namespace: str) -> None:
    """The record step after a promotion of chunks rebuilt from S3 only (a young session
    deleted with `--cascade=foreground`: its RecordingChunks went before any was mirrored
    `done`, so SQL has no done temp row): the verified final manifest is recorded, the
    meeting ends `completed`. Before, `promote_temp_recordings_to_persistent` returned
    nothing without a done temp row and the step raised PromotionFailed at every retry:
    the finalizer held for good (review of 4b38f23)."""
    s = await make_session(ctx, kubectl, namespace, "young")
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    store = ctx.store(s.spec.storage.bucket)
    tracks = []
    for kind, user in (("speaker", USER), ("mixed", None)):
        key = s.layout.final_key(user or MIX_TRACK, "mp3")
        body = f"final {kind}".encode()
        tracks.append(FinalTrack(track=user or MIX_TRACK, kind=kind, user_id=user, format="mp3",
                                 key=key, bytes=len(body),
                                 sha256=store.sync.put_bytes(key, body, "audio/mpeg"),
                                 duration_ms=1000))
    await store.put_json(s.layout.final_manifest_key, FinalManifest(
        tool_version="test", meeting_id=s.meeting_id, duration_ms=1000, recorded_ms=1000,
        paused_ms=0, tracks=tracks).to_api())
    assert await ctx.db.get_temp_recordings_for_meeting(s.meeting_id) == []

    p = await DeletionService(ctx).record(s, DeletionProgress(step=DeletionStep.RECORD,
                                                              promoted=True))
    assert p.step is DeletionStep.COLLECT and p.recording_ids and len(p.recording_ids) == 2
    rows = await ctx.db.get_recordings_for_meeting(s.meeting_id)
    assert sorted(r.object_key for r in rows) == sorted(t.key for t in tracks)
    assert (await ctx.db.get_meeting(s.meeting_id)).status == "completed"
