"""An opt-out no chunk carried reaches the promotion (review finding #3): a role opt-out
made while the session is paused (no window open, so no chunk is sealed) or after the
last chunk was sealed was in no RecordingChunk's `optedOut`, so promotion, which reads the
last chunk's, never saw it and promoted the member's earlier audio. At stop the recorder
now writes a marker chunk without tracks (20 ms, after the last chunk) that carries the
current `optedOut` whenever it differs from the last chunk's.

The real `Recorder`, `RecorderKube` and `ChunkUploader` against the local control plane
(CRDs installed, no operator); the session's opt-out role is read through `Consent`'s
`roles_of`, standing in for discord.py's member cache (the local Discord path of roles is
tests/integration/test_local_discord_roles.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from voicetrack.chunkspec import ChunkSpec, OptOut
from voicetrack.errors import TemporaryFailure
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MeetingLayout
from voicetrack.names import chunk_name
from voicetrack.objectstore import ObjectStore
from voicetrack.resources import (
    API_VERSION,
    GROUP,
    SESSION_KIND,
    SESSION_PLURAL,
    VERSION,
    SessionSpec,
)
from voicetrack.uploadgrant import mint_upload_grant
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_operator.builders import SessionRef
from voicetrack_operator.services.isolation import ChunkClaim, SessionFacts, chunk_refusal
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader, GrantWriter

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GUILD, CHANNEL = "300000000000000101", "300000000000000102"
ROLE, A = "300000000000000103", "400000000000000104"
MEETING = "abcdef0123456789"


class Idle:
    """A source that captures nothing until stopped (the session is paused)."""

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


def paused_recorder(cluster: LocalCluster, namespace: str, tmp_path: Path,
                    chunk0: ChunkSpec) -> tuple[RecorderKube, Recorder]:
    """A paused session `standup` with `optOutRoleIds` [ROLE] on the local control plane,
    its chunk 0 `chunk0` already created, and a Recorder for it (no S3: no tracks)."""
    install_crds(cluster.kubeconfig)
    api = load_api_client(str(cluster.kubeconfig))
    raw_spec = {"guildId": GUILD, "channelId": CHANNEL, "paused": True,
                "optOutRoleIds": [ROLE]}
    obj: Any = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, SESSION_PLURAL,
        {"apiVersion": API_VERSION, "kind": SESSION_KIND,
         "metadata": {"name": "standup"}, "spec": raw_spec})
    uid = obj["metadata"]["uid"]
    kube = RecorderKube(api, namespace, "standup")
    kube.create_chunk(chunk0, uid)
    kube.paused = True
    spool = Spool(tmp_path / "spool", 1 << 30, MeetingLayout(
        prefix="recordings", guild_id=GUILD, meeting_id=MEETING), "standup")
    uploader = ChunkUploader(cast(Any, None), kube, spool, uid,
                             ack_file=str(tmp_path / "acked.json"))  # no track: no S3
    rec = Recorder(kube, uploader, SessionSpec.model_validate(raw_spec),
                   SessionClock(int(time.time() * 1000) - 60_000))
    return kube, rec


async def test_a_role_opt_out_while_paused_reaches_a_marker_chunk_at_stop(
        cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    # A spoke in chunk 0 (recorded before the pause; its track is left out here)
    kube, rec = paused_recorder(cluster, namespace, tmp_path, ChunkSpec(
        session_name="standup", meeting_id=MEETING, guild_id=GUILD, index=0, start_ms=0,
        end_ms=5000))
    roles: dict[str, list[str]] = {A: []}
    rec.consent.roles_of = roles.get
    await rec.prepare()
    assert not rec.consent.see(A)  # in the channel, recorded

    run = asyncio.create_task(rec.run(Idle()))
    await asyncio.sleep(0.3)
    roles[A] = [ROLE]  # a moderator gives A the opt-out role during the pause
    await asyncio.sleep(0.3)
    assert rec.consent.excluded(A)
    rec.stop.set()  # /record stop while paused
    result = await asyncio.wait_for(run, 60)

    chunks = kube.list_chunks()
    assert [c.index for c in chunks] == [0, 1], result
    marker = chunks[-1]
    assert marker.tracks == [] and (marker.start_ms, marker.end_ms) == (5000, 5020)
    assert [(o.user_id, o.via) for o in marker.opted_out] == [(A, "role")]
    assert result.chunks == 1


async def test_no_marker_when_the_last_chunk_already_says_it(
        cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    kube, rec = paused_recorder(cluster, namespace, tmp_path, ChunkSpec(
        session_name="standup", meeting_id=MEETING, guild_id=GUILD, index=0, start_ms=0,
        end_ms=5000, opted_out=[OptOut(user_id=A, since_ms=1000, via="role")]))
    rec.consent.roles_of = {A: [ROLE]}.get
    await rec.prepare()
    run = asyncio.create_task(rec.run(Idle()))
    await asyncio.sleep(0.3)
    rec.stop.set()
    await asyncio.wait_for(run, 60)
    assert [c.index for c in kube.list_chunks()] == [0]


def hold_terminating(core: client.CoreV1Api, namespace: str) -> None:
    """Delete `namespace` while a ConfigMap's finalizer holds it Terminating; returns once
    the API server refuses creates there (403, as for a namespace being deleted)."""
    core.create_namespaced_config_map(namespace, {"metadata": {
        "name": "hold", "finalizers": ["voicetrack.dev/test-hold"]}})
    core.delete_namespace(namespace)
    for _ in range(100):
        try:
            core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "p-"}})
        except client.ApiException as err:
            if err.status == 403:
                return
            raise
        time.sleep(0.1)
    raise TimeoutError(f"namespace {namespace} still takes creates")


async def test_a_consent_marker_a_terminating_namespace_refuses_is_stored_in_s3(
        cluster: LocalCluster, namespace: str, tmp_path: Path,
        object_store: ObjectStore) -> None:
    """/record stop while the session's namespace is being deleted: the API server refuses
    the consent marker (403), so its spec goes to S3 beside the audio (`chunk.json` in its
    chunk folder, with the session's upload grant), where the operator's inventory rebuilds
    it as the session's chunk and promotion reads the opt-out. Before: nothing was written,
    and A's audio in chunk 0 would have been promoted."""
    kube, rec = paused_recorder(cluster, namespace, tmp_path, ChunkSpec(
        session_name="standup", meeting_id=MEETING, guild_id=GUILD, index=0, start_ms=0,
        end_ms=5000))
    layout = rec.uploader.spool.layout
    grant = mint_upload_grant(object_store.settings, object_store.settings.bucket,
                              layout.chunks_root, datetime.now(UTC) + timedelta(hours=1))
    rec.uploader.store = GrantWriter(object_store.settings.endpoint, grant)
    rec.flush.grace_s, rec.flush.marker_grace_s = 1.0, 1.0
    roles: dict[str, list[str]] = {A: []}
    rec.consent.roles_of = roles.get
    await rec.prepare()
    assert not rec.consent.see(A)  # in the channel, recorded
    uid = kube.objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, SESSION_PLURAL, "standup")["metadata"]["uid"]
    created = datetime.now(UTC)
    core = client.CoreV1Api(kube.objects.api_client)
    run = asyncio.create_task(rec.run(Idle()))
    await asyncio.sleep(0.3)
    roles[A] = [ROLE]
    await asyncio.sleep(0.3)
    assert rec.consent.excluded(A)
    try:
        await asyncio.to_thread(hold_terminating, core, namespace)
        rec.stop.set()
        await asyncio.wait_for(run, 60)
        with pytest.raises(TemporaryFailure):  # the object was refused, as the API said
            kube.create_chunk(ChunkSpec(session_name="standup", meeting_id=MEETING,
                                        guild_id=GUILD, index=2, start_ms=6000,
                                        end_ms=6020), uid)
        marker = ChunkSpec.model_validate(object_store.get_json(layout.chunk_manifest_key(1)))
        assert marker.tracks == [] and (marker.start_ms, marker.end_ms) == (5000, 5020)
        assert [(o.user_id, o.via) for o in marker.opted_out] == [(A, "role")]
        # the inventory's check takes it as the session's chunk 1 (the recorder's clock
        # started 60 s before the object: `paused_recorder`)
        facts = SessionFacts(ref=SessionRef("standup", namespace, uid), layout=layout,
                             raw_format=marker.raw_format, created=created)
        claim = ChunkClaim(name=chunk_name("standup", 1), label_session=None, owner_uid=uid,
                           spec=marker, created=None)
        assert chunk_refusal(claim, facts, created + timedelta(seconds=60), None) is None
    finally:  # let the namespace go
        core.patch_namespaced_config_map("hold", namespace, {"metadata": {"finalizers": None}})
