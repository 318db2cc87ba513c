"""The operator's services and adapters against real components, no operator process: the
local API server (CRDs installed), SeaweedFS, and a SQLite database at its Alembic head.

Sessions use the `discord` source in a namespace without Secrets, so the recorder and
transcoder pods the services create never start: every state change here is made by the
service under test (or by the test, standing in for the world).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import ChunkOutput, ChunkSpec, ChunkStatus, ChunkTrack
from voicetrack.db import migrate
from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest, FinalTrack, PromotionPlan
from voicetrack.names import chunk_name, owner_reference, recorder_pod_name, transcode_job_name
from voicetrack.objectstore import S3Settings
from voicetrack.resources import (
    API_VERSION,
    CHUNK_KIND,
    GROUP,
    LABEL_SESSION,
    SESSION_PLURAL,
    VERSION,
    SessionState,
    TranscodeStatus,
)
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.ports import free_port
from voicetrack_local.stack import install_crds
from voicetrack_operator.adapters.kube import KubeAdapter
from voicetrack_operator.builders import (
    PodSettings,
    SessionRef,
    build_recorder_rbac,
    build_session_recorder_rbac,
)
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.jobs import build_transcode_job
from voicetrack_operator.services.chunkmirror import mirror
from voicetrack_operator.services.chunks import ChunkService
from voicetrack_operator.services.chunkstate import ChunkRef
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.deletionstate import DeletionProgress, DeletionStep
from voicetrack_operator.services.failures import (
    FAILURE_LIMIT,
    FAILURES_ANNOTATION,
    TranscodeFailures,
    failed_reason,
)
from voicetrack_operator.services.inventory import collect_chunks
from voicetrack_operator.services.janitor import SERVICE_NAME, JanitorService
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import SessionView

pytestmark = pytest.mark.e2e

SHA = "ab" * 32
USERS = ("400000000000000021", "400000000000000022")


def snowflake() -> str:
    """A random 18-digit id: each test has its own guild, so no session is busy."""
    return str(10**17 + secrets.randbelow(8 * 10**17))


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> None:
    install_crds(cluster.kubeconfig)


@pytest.fixture
async def ctx(cluster: LocalCluster, crds: None, s3_server: S3Settings,
              tmp_path: Path) -> AsyncIterator[Context]:
    """A real operator context: admin API client, SQLite at its head, the S3 server."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'voicetrack.db'}"
    await asyncio.to_thread(migrate.upgrade_head, url)
    settings = OperatorSettings(database_url=url, s3=s3_server,
                                pods=PodSettings(s3_endpoint=s3_server.endpoint),
                                temp_ttl=timedelta(seconds=1),
                                kubeconfig=str(cluster.kubeconfig))
    c = Context(settings=settings, kube=KubeAdapter(load_api_client(str(cluster.kubeconfig))),
                db=RecordingService.from_url(url))
    await c.store(s3_server.bucket).ensure_bucket()
    try:
        yield c
    finally:
        await c.db.close()
        c.kube.api.close()


def apply(kubectl: Kubectl, doc: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(doc))


async def make_session(ctx: Context, kubectl: Kubectl, ns: str, name: str,
                       **spec: Any) -> SessionView:
    apply(kubectl, {"apiVersion": API_VERSION, "kind": "RecordingSession",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"guildId": snowflake(), "channelId": snowflake(), "paused": True,
                             **spec}})
    return await read_session(ctx, ns, name)


async def read_session(ctx: Context, ns: str, name: str) -> SessionView:
    body = await ctx.kube.get_session(ns, name)
    assert body is not None
    return SessionView.parse(body)


async def set_status(ctx: Context, s: SessionView, status: dict[str, Any]) -> SessionView:
    """Merge `status` into the session's status, as kopf applies a handler's patch."""
    await asyncio.to_thread(ctx.kube.objects.patch_namespaced_custom_object_status, GROUP,
                            VERSION, s.ref.namespace, SESSION_PLURAL, s.ref.name,
                            {"status": status})
    return await read_session(ctx, s.ref.namespace, s.ref.name)


def chunk_doc(s: SessionView, index: int, start: int, end: int,
              users: tuple[str, ...] = USERS) -> dict[str, Any]:
    """A RecordingChunk as the recorder creates it (owned by the session)."""
    spec = ChunkSpec(session_name=s.ref.name, meeting_id=s.meeting_id,
                     guild_id=s.spec.guild_id, index=index, start_ms=start, end_ms=end,
                     tracks=[ChunkTrack(user_id=u, key=s.layout.raw_key(index, u, "ogg-opus"),
                                        frames=(end - start) // 20, first_ms=start,
                                        last_ms=end - 20, bytes=100, sha256=SHA)
                             for u in users])
    return {"apiVersion": API_VERSION, "kind": CHUNK_KIND,
            "metadata": {"name": chunk_name(s.ref.name, index), "namespace": s.ref.namespace,
                         "labels": {LABEL_SESSION: s.ref.name},
                         "ownerReferences": [owner_reference(s.ref.name, s.ref.uid)]},
            "spec": spec.to_api()}


async def put_raws(ctx: Context, s: SessionView, doc: dict[str, Any]) -> None:
    """Upload a stand-in raw object for each track of chunk `doc`, as the recorder uploads
    before it creates the chunk (the operator refuses a chunk whose raw tracks are absent)."""
    for track in doc["spec"].get("tracks", []):
        await ctx.store(s.spec.storage.bucket).put_json(track["key"], {"raw": track["key"]})


async def make_chunk(ctx: Context, kubectl: Kubectl, s: SessionView, index: int, start: int,
                     end: int) -> ChunkRef:
    doc = chunk_doc(s, index, start, end)
    await put_raws(ctx, s, doc)
    apply(kubectl, doc)
    obj = await ctx.kube.get_chunk(s.ref.namespace, chunk_name(s.ref.name, index))
    assert obj is not None
    return ChunkRef.from_object(obj)


def rows_of(rows: list[Any]) -> list[tuple[Any, ...]]:
    return sorted((r.chunk_index, r.user_id, str(r.transcode_status), r.job_name, r.mp3_path,
                   r.sha256, r.duration_ms, r.error) for r in rows)


# ---------------------------------------------------------------- KubeAdapter


def kubeconfig_with(cluster: LocalCluster, tmp_path: Path, server: str | None = None,
                    token: str | None = None) -> str:
    """The admin kubeconfig with another server address or a bearer token instead."""
    doc = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    if server:
        doc["clusters"][0]["cluster"]["server"] = server
    if token:
        doc["users"][0]["user"] = {"token": token}
    path = tmp_path / f"kubeconfig-{secrets.token_hex(3)}"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def test_kube_adapter_is_idempotent_and_translates_errors(
        ctx: Context, namespace: str, kubectl: Kubectl, cluster: LocalCluster,
        tmp_path: Path) -> None:
    kube, ns = ctx.kube, namespace
    sa = {"apiVersion": "v1", "kind": "ServiceAccount",
          "metadata": {"name": "probe", "namespace": ns}}
    assert await kube.ensure(sa) is True
    assert await kube.ensure(sa) is False  # 409 on create: it exists, success
    assert await kube.get_pod(ns, "absent") is None
    assert await kube.delete_pod(ns, "absent") is False  # 404 on delete: done
    assert await kube.delete_job(ns, "absent") is False
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name", "namespace": ns},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    with pytest.raises(InvalidInputError, match="Bad_Name"):  # the API server's message
        await kube.ensure(bad)

    # 403 is temporary (RBAC is fixed by an admin, or a fresh binding propagates); before
    # translate_api_error the operator made it an input error.
    kubectl("-n", ns, "create", "serviceaccount", "nobody")
    token = kubectl("-n", ns, "create", "token", "nobody").stdout.strip()
    nobody = KubeAdapter(load_api_client(kubeconfig_with(cluster, tmp_path, token=token)))
    try:
        with pytest.raises(TemporaryFailure, match="forbidden"):
            await nobody.list_sessions()
    finally:
        nobody.api.close()
    away = KubeAdapter(load_api_client(kubeconfig_with(cluster, tmp_path,
                                                       server="https://127.0.0.1:9")))
    try:
        with pytest.raises(TemporaryFailure, match="unreachable"):
            await away.get_pod(ns, "x")
    finally:
        away.api.close()


# ---------------------------------------------------------------- SessionService


async def test_ensure_session_twice_has_the_effect_of_once(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    s = await make_session(ctx, kubectl, namespace, "twice")
    svc = SessionService(ctx)
    first = await svc.ensure_session(s)
    assert first["state"] == SessionState.PAUSED and first["meetingId"] == s.meeting_id
    pod = await ctx.kube.get_pod(namespace, recorder_pod_name("twice"))
    assert pod is not None
    writes = ctx.kube.writes

    # Again with the status applied (an operator restart: on.resume), and again with the
    # stale view (a retry whose status patch was lost): same pod, same meeting row.
    again = await svc.ensure_session(await set_status(ctx, s, first))
    assert "startedAt" not in again and "recorderPod" not in again
    await svc.ensure_session(s)
    pod2 = await ctx.kube.get_pod(namespace, recorder_pod_name("twice"))
    assert pod2 is not None and pod2["metadata"]["uid"] == pod["metadata"]["uid"]
    # The stale retry's creates, each a 409: the namespace's transcoder account, the
    # session's recorder identity (account, Role, binding), the pod. Its upload grant is
    # read, found valid and not written (services/grants.py).
    creates = len(build_recorder_rbac(namespace)) + len(build_session_recorder_rbac(s.ref)) + 1
    assert ctx.kube.writes - writes == creates
    meeting = await ctx.db.get_meeting(s.meeting_id)
    assert meeting.guild_id == s.spec.guild_id
    pods = await ctx.kube.list_pods(namespace, f"{LABEL_SESSION}=twice")
    assert [p["metadata"]["name"] for p in pods] == [recorder_pod_name("twice")]


async def test_started_at_is_chosen_once_even_if_its_status_patch_was_lost(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Item 10. The operator made the recorder pod, then died before its status patch
    landed: the retry (same stale view, a second later) keeps the pod's clock origin
    instead of choosing a new `startedAt` that the running recorder does not use. (Before:
    a new startedAt, one second later than the pod's.)"""
    s = await make_session(ctx, kubectl, namespace, "clock")
    svc = SessionService(ctx)
    first = await svc.ensure_session(s)  # its patch is "lost": s keeps the empty status
    await asyncio.sleep(1.1)
    again = await svc.ensure_session(s)
    assert again["startedAt"] == first["startedAt"]
    pod = await ctx.kube.get_pod(namespace, recorder_pod_name("clock"))
    assert pod is not None
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    started_ms = int(datetime.fromisoformat(first["startedAt"].replace("Z", "+00:00"))
                     .timestamp() * 1000)
    assert env["VOICETRACK_SESSION_STARTED_AT_MS"] == str(started_ms)


async def test_a_transcode_timeout_stops_the_job_and_never_overwrites_a_late_done(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Item 9. A chunk still pending at the transcode timeout has its Job deleted before
    it is marked failed (its outputs cannot land after collection); a `done` that lands
    between the timeout's read and its patch stands. (Before: the Job kept running until
    the garbage collector came, and the patch had no resourceVersion.)"""
    s = await make_session(ctx, kubectl, namespace, "timeout")
    await SessionService(ctx).ensure_session(s)
    chunks = ChunkService(ctx)
    slow = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    await chunks.ensure_chunk(slow)
    assert await ctx.kube.get_job(namespace, transcode_job_name("timeout", 0)) is not None
    assert await chunks.fail_pending(namespace, "timeout", s.ref.uid, "too slow") == 1
    job = await ctx.kube.get_job(namespace, transcode_job_name("timeout", 0))
    assert job is None or job["metadata"].get("deletionTimestamp"), job
    obj = await ctx.kube.get_chunk(namespace, slow.name)
    assert obj is not None and obj["status"]["transcodeStatus"] == "failed"

    late = await make_chunk(ctx, kubectl, s, 1, 5000, 10_000)
    await chunks.ensure_chunk(late)
    stale = [o for o in await ctx.kube.list_chunks(namespace, "timeout", s.ref.uid)
             if o["spec"]["index"] == 1]
    await ctx.kube.patch_chunk_status(namespace, late.name, {"transcodeStatus": "done"})
    assert await chunks.fail_pending(namespace, "timeout", s.ref.uid, "too slow",
                                     chunk_objs=stale) == 0
    obj = await ctx.kube.get_chunk(namespace, late.name)
    assert obj is not None and obj["status"]["transcodeStatus"] == "done"


async def test_a_pending_chunk_whose_job_was_collected_is_done_from_its_result(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Issue 11 scenario 2: the chunk's Job ran to the end and its TTL collected it while
    the operator was away, so the chunk is still `queued`. The catch-up reads its
    result.json and marks it done; it does not transcode it again (before: a new Job)."""
    s = await make_session(ctx, kubectl, namespace, "ttl")
    await SessionService(ctx).ensure_session(s)
    chunks = ChunkService(ctx)
    await chunks.ensure_chunk(await make_chunk(ctx, kubectl, s, 0, 0, 5000))
    await chunks.ensure_chunk(await make_chunk(ctx, kubectl, s, 1, 5000, 10_000))
    for index in (0, 1):
        await ctx.kube.delete_job(namespace, transcode_job_name("ttl", index))
    outputs = [ChunkOutput(user_id=u, format="mp3", key=s.layout.chunk_output_key(0, u, "mp3"),
                           bytes=10, sha256="ef" * 32, duration_ms=5000).to_api()
               for u in USERS]
    await ctx.store(s.spec.storage.bucket).put_json(s.layout.result_key(0), {
        "toolVersion": "test", "index": 0, "outputs": outputs})  # chunk 1 never finished

    for _ in range(300):  # collected: the TTL controller deletes in the background
        if not await ctx.kube.list_jobs(namespace, "ttl"):
            break
        await asyncio.sleep(0.1)
    objs = await ctx.kube.list_chunks(namespace, "ttl", s.ref.uid)
    await chunks.catch_up(namespace, "ttl", s.ref.uid, objs)
    done = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    assert done.status.transcode_status == "done" and len(done.status.tracks) == 2
    rows = rows_of(await ctx.db.get_temp_recordings_for_meeting(s.meeting_id))
    assert [(r[0], r[2]) for r in rows] == [(0, "done"), (0, "done"), (1, "queued"),
                                           (1, "queued")]
    live = [j["metadata"]["name"] for j in await ctx.kube.list_jobs(namespace, "ttl")
            if not j["metadata"].get("deletionTimestamp")]
    assert live == [transcode_job_name("ttl", 1)]  # only the unfinished one runs again


async def test_busy_guild_is_refused_and_refused_stays_put(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    first = await make_session(ctx, kubectl, namespace, "first")
    await SessionService(ctx).ensure_session(first)
    second = await make_session(ctx, kubectl, namespace, "second",
                                guildId=first.spec.guild_id)
    refused = await SessionService(ctx).ensure_session(second)
    assert refused["state"] == SessionState.REFUSED
    assert await ctx.kube.get_pod(namespace, recorder_pod_name("second")) is None
    second = await set_status(ctx, second, refused)
    assert await SessionService(ctx).ensure_session(second) == {}
    out = await DeletionService(ctx).finalize_session(second)
    assert out.done and out.state is SessionState.REFUSED


async def test_a_refused_session_that_recorded_is_stopped_and_promoted(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """The index race: a start made the recorder pod but its status patch was lost, and a
    later start found the guild busy and refused the session; its recorder wrote a chunk.
    Its deletion stops the recorder and promotes the chunk, as a Failed session's does.
    Before, a Refused session was released at once: the recorder pod and the chunk went
    with it (garbage collector), unpromoted."""
    s = await make_session(ctx, kubectl, namespace, "raced", paused=False)
    await SessionService(ctx).ensure_session(s)  # the pod; its status patch lost
    s = await set_status(ctx, s, SessionService(ctx)._refused(s, "guild is busy"))
    assert s.state is SessionState.REFUSED
    chunk = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    await ChunkService(ctx).ensure_chunk(chunk)
    await ctx.kube.patch_chunk_status(namespace, chunk.name, {"transcodeStatus": "done"})
    deletion = DeletionService(ctx)

    out = await deletion.finalize_session(s)
    assert not out.done and out.state is SessionState.STOPPING, out.message
    pod = recorder_pod_name("raced")
    after = await ctx.kube.get_pod(namespace, pod)
    assert after is None or after["metadata"].get("deletionTimestamp"), after
    await ctx.kube.delete_pod(namespace, pod, 0)  # never ran
    for _ in range(100):
        if await ctx.kube.get_pod(namespace, pod) is None:
            break
        await asyncio.sleep(0.1)
    out = await deletion.finalize_session(await set_status(ctx, s, out.status))
    assert out.state is SessionState.PROMOTING and out.message == "promotion started"
    assert await ctx.kube.get_job(namespace, "raced-promote") is not None


# ---------------------------------------------------------------- ChunkService


async def test_chunk_ensure_observe_and_mirror_twice_have_the_effect_of_once(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    s = await make_session(ctx, kubectl, namespace, "chunky")
    await SessionService(ctx).ensure_session(s)
    chunks = ChunkService(ctx)
    stale = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    assert not stale.ensured
    status = await chunks.ensure_chunk(stale)
    assert status.transcode_status == "queued" and status.job_name == transcode_job_name(
        "chunky", 0)
    rows = rows_of(await ctx.db.get_temp_recordings_for_meeting(s.meeting_id))
    assert [r[:3] for r in rows] == [(0, USERS[0], "queued"), (0, USERS[1], "queued")]
    fresh = await make_chunk(ctx, kubectl, s, 0, 0, 5000)  # re-read: ensured now
    assert fresh.ensured and fresh.status == status
    await chunks.ensure_chunk(fresh)
    await chunks.ensure_chunk(stale)  # its resourceVersion is old: a no-op
    assert rows_of(await ctx.db.get_temp_recordings_for_meeting(s.meeting_id)) == rows
    jobs = await ctx.kube.list_jobs(namespace, "chunky")
    assert [j["metadata"]["name"] for j in jobs] == [transcode_job_name("chunky", 0)]

    # The Job completes (its status as the job controller writes it); the result names a
    # FLAC before each MP3, and SQL takes the MP3 from the typed chunk status.
    outputs = []
    for u in USERS:
        for fmt, digest in (("flac", "cd" * 32), ("mp3", "ef" * 32)):
            outputs.append(ChunkOutput(user_id=u, format=fmt,
                                       key=s.layout.chunk_output_key(0, u, fmt),
                                       bytes=10, sha256=digest, duration_ms=5000).to_api())
    await ctx.store(s.spec.storage.bucket).put_json(s.layout.result_key(0), {
        "toolVersion": "test", "index": 0, "outputs": outputs})
    job = {**jobs[0], "status": {"conditions": [{"type": "Complete", "status": "True"}],
                                 "succeeded": 1}}
    await chunks.observe_job(job)
    done = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    assert done.status.transcode_status == "done" and len(done.status.tracks) == 4
    rows = rows_of(await ctx.db.get_temp_recordings_for_meeting(s.meeting_id))
    assert [(r[2], r[4], r[5], r[6]) for r in rows] == [
        ("done", s.layout.chunk_output_key(0, u, "mp3"), "ef" * 32, 5000) for u in USERS]
    await chunks.observe_job(job)  # twice: no move, no write
    assert await mirror(ctx, done) and await mirror(ctx, done)
    assert rows_of(await ctx.db.get_temp_recordings_for_meeting(s.meeting_id)) == rows
    failed_job = {**job, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    await chunks.observe_job(failed_job)  # never back: done stays done
    again = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    assert again.status == done.status


async def test_a_transcode_out_of_retries_is_made_again_not_failed(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A transcoder Job whose pods all failed while S3 was away (`BackoffLimitExceeded`)
    is deleted and made again; its chunk stays pending, never `failed` (issue 11 item 4:
    before, the chunk was failed for good and promotion made its intact raw audio
    silence). One failed on its input (`PodFailurePolicy`, exit 2) fails the chunk."""
    s = await make_session(ctx, kubectl, namespace, "retried")
    await SessionService(ctx).ensure_session(s)
    chunks = ChunkService(ctx)
    await chunks.ensure_chunk(await make_chunk(ctx, kubectl, s, 0, 0, 5000))
    job = await ctx.kube.get_job(namespace, transcode_job_name("retried", 0))
    assert job is not None
    out_of_retries = {**job, "status": {"failed": 5, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}}
    await chunks.observe_job(out_of_retries)
    pending = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    assert pending.status.transcode_status == "queued", pending.status
    gone = await ctx.kube.get_job(namespace, transcode_job_name("retried", 0))
    assert gone is None or gone["metadata"].get("deletionTimestamp"), gone
    assert ctx.metrics.transcode_retries._value.get() == 1

    await chunks.ensure_chunk(await make_chunk(ctx, kubectl, s, 1, 5000, 10_000))
    job1 = await ctx.kube.get_job(namespace, transcode_job_name("retried", 1))
    assert job1 is not None
    await chunks.observe_job({**job1, "status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}})
    failed = await make_chunk(ctx, kubectl, s, 1, 5000, 10_000)
    assert failed.status.transcode_status == "failed", failed.status


async def wait_failed(ctx: Context, ns: str, name: str, timeout_s: float = 60
                      ) -> dict[str, Any]:
    """Job `ns/name` once the Job controller has failed it."""
    for _ in range(int(timeout_s / 0.2)):
        job = await ctx.kube.get_job(ns, name)
        assert job is not None, name
        if failed_reason(job) is not None:
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"Job {ns}/{name} not failed after {timeout_s} s")


async def test_a_job_of_the_previous_layout_is_made_again_not_failed(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """An upgrade while a chunk transcodes: the older transcoder's Job wrote its result in
    the chunk's folder (`chunks/<k>/result.json`, where the recorder's grant reaches), the
    new operator reads `outputs/<k>/`. The chunk is transcoded again, its Job counted, not
    failed. Before (review of the day's diff, fault 1): "result.json unusable", the chunk
    failed and its window a gap, for every chunk in flight during a `helm upgrade`."""
    s = await make_session(ctx, kubectl, namespace, "upgrade")
    await SessionService(ctx).ensure_session(s)
    chunks = ChunkService(ctx)
    await chunks.ensure_chunk(await make_chunk(ctx, kubectl, s, 0, 0, 5000))
    name = transcode_job_name("upgrade", 0)
    job = await ctx.kube.get_job(namespace, name)
    assert job is not None
    await ctx.store(s.spec.storage.bucket).put_json(
        f"{s.layout.chunk_dir(0)}/result.json", {"toolVersion": "old", "index": 0,
                                                 "outputs": []})
    await chunks.observe_job({**job, "status": {
        "conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}})
    again = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    assert again.status.transcode_status == "queued", again.status
    gone = await ctx.kube.get_job(namespace, name)
    assert gone is None or gone["metadata"].get("deletionTimestamp") \
        or gone["metadata"]["uid"] != job["metadata"]["uid"], gone
    obj = await ctx.kube.get_chunk(namespace, again.name)
    assert obj is not None and TranscodeFailures.of(obj) == TranscodeFailures(1, 0)


async def test_a_transcode_past_its_deadline_is_made_again_up_to_a_limit(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A transcoder Job the Job controller stops at its `activeDeadlineSeconds` (here its
    pod never starts: Pending, as on a lost node or a full cluster) is deleted and its
    chunk counted, not failed: before, `DeadlineExceeded` failed the chunk for good and
    promotion made its intact raw audio silence. At `FAILURE_LIMIT` such Jobs the chunk
    is failed, with a reason that says so (before, it was made again for ever)."""
    s = await make_session(ctx, kubectl, namespace, "deadline")
    await SessionService(ctx).ensure_session(s)
    chunks = ChunkService(ctx)
    await chunks.ensure_chunk(await make_chunk(ctx, kubectl, s, 0, 0, 5000))
    name = transcode_job_name("deadline", 0)
    kubectl("patch", "job", name, "-n", namespace, "--type", "merge",
            "-p", json.dumps({"spec": {"activeDeadlineSeconds": 1}}))
    job = await wait_failed(ctx, namespace, name)
    assert failed_reason(job) == "DeadlineExceeded", job["status"]
    await chunks.observe_job(job)
    pending = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    assert pending.status.transcode_status == "queued", pending.status
    gone = await ctx.kube.get_job(namespace, name)
    assert gone is None or gone["metadata"].get("deletionTimestamp"), gone
    obj = await ctx.kube.get_chunk(namespace, pending.name)
    assert obj is not None and TranscodeFailures.of(obj) == TranscodeFailures(1, 0)
    await chunks.observe_job(job)  # its deletion seen later: counted once
    obj = await ctx.kube.get_chunk(namespace, pending.name)
    assert obj is not None and TranscodeFailures.of(obj) == TranscodeFailures(1, 0)

    for _ in range(100):  # the Job gone, the safety net makes it again
        if await ctx.kube.get_job(namespace, name) is None:
            break
        await asyncio.sleep(0.1)
    await chunks.ensure_chunk(pending)
    again = await ctx.kube.get_job(namespace, name)
    assert again is not None
    assert again["metadata"]["uid"] != job["metadata"]["uid"]
    kubectl("annotate", "recordingchunk", pending.name, "-n", namespace, "--overwrite",
            f"{FAILURES_ANNOTATION}={FAILURE_LIMIT - 1}")
    await chunks.observe_job({**again, "status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline"}]}})
    failed = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    assert failed.status.transcode_status == "failed", failed.status
    assert failed.status.error == (
        f"transcode failed in {FAILURE_LIMIT} Jobs, never on its input (last: "
        "DeadlineExceeded: Job was active longer than specified deadline); the raw audio "
        "is kept")


async def test_an_earlier_namesakes_children_are_not_this_sessions(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """The bot names sessions `g-<guild>`: after a stop the garbage collector removes the
    old session's Jobs and chunks only after the session is gone, and a new session of the
    same name may meet them. Fails without the owner checks: the 409 counted as the new
    chunk's Job, and the old Job's events moved the new chunk."""
    old = await make_session(ctx, kubectl, namespace, "again-old")
    new = await make_session(ctx, kubectl, namespace, "again")
    await SessionService(ctx).ensure_session(new)
    chunk = await make_chunk(ctx, kubectl, new, 0, 0, 5000)
    stale = build_transcode_job(SessionRef("again", namespace, old.ref.uid), chunk.spec,
                                new.spec, ctx.settings.pods)
    stale["metadata"]["ownerReferences"][0]["name"] = "again-old"  # a live owner: kept
    assert await ctx.kube.ensure(stale) is True
    leftover = chunk_doc(new, 1, 5000, 10_000)
    leftover["metadata"]["ownerReferences"] = [owner_reference("again-old", old.ref.uid)]
    apply(kubectl, leftover)

    with pytest.raises(TemporaryFailure, match="owned by another session"):
        await ChunkService(ctx).ensure_chunk(chunk)
    assert await ctx.kube.list_jobs(namespace, "again", new.ref.uid) == []
    assert [c["metadata"]["name"] for c in await ctx.kube.list_chunks(
        namespace, "again", new.ref.uid)] == [chunk_name("again", 0)]
    job = await ctx.kube.get_job(namespace, transcode_job_name("again", 0))
    assert job is not None
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    await ChunkService(ctx).observe_job(job)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("again", 0))
    assert obj is not None and obj["status"]["transcodeStatus"] == "queued"

    await ctx.kube.delete_job(namespace, transcode_job_name("again", 0))  # as the GC does
    for _ in range(100):
        if await ctx.kube.get_job(namespace, transcode_job_name("again", 0)) is None:
            break
        await asyncio.sleep(0.1)
    status = await SessionService(ctx).observe_session(await read_session(ctx, namespace,
                                                                          "again"))
    assert status["chunks"]["total"] == 1  # the namesake's leftover chunk is not counted
    jobs = await ctx.kube.list_jobs(namespace, "again", new.ref.uid)
    assert [j["metadata"]["name"] for j in jobs] == [transcode_job_name("again", 0)]


# ---------------------------------------------------------------- DeletionService


async def test_deletion_leaves_out_overlapping_chunks_and_resumes_at_its_step(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    s = await make_session(ctx, kubectl, namespace, "overlap")
    await SessionService(ctx).ensure_session(s)
    bucket = ctx.store(s.spec.storage.bucket)
    for index, (start, end) in enumerate([(0, 5000), (4000, 9000)]):  # a recorder bug
        chunk = await make_chunk(ctx, kubectl, s, index, start, end)
        await ChunkService(ctx).ensure_chunk(chunk)
        await ctx.kube.patch_chunk_status(namespace, chunk.name, {"transcodeStatus": "done"})
        await bucket.put_json(s.layout.raw_key(index, USERS[0], "ogg-opus"), {"raw": index})
    deletion = DeletionService(ctx)

    out = await deletion.finalize_session(s)  # the recorder pod is still there
    assert out.state is SessionState.STOPPING and out.retry_in == 1 and not out.failed
    assert out.progress.step is DeletionStep.STOP
    pod = await ctx.kube.get_pod(namespace, recorder_pod_name("overlap"))
    # deleting, or already gone (a pod not yet running on a node goes at once)
    assert pod is None or pod["metadata"].get("deletionTimestamp"), pod
    await ctx.kube.delete_pod(namespace, recorder_pod_name("overlap"), 0)  # never ran
    for _ in range(100):
        if await ctx.kube.get_pod(namespace, recorder_pod_name("overlap")) is None:
            break
        await asyncio.sleep(0.1)
    s = await set_status(ctx, s, out.status)

    # Overlapping windows (a recorder fault, or a compromised recorder's forgery) are no
    # input error: the later chunk is left out of the plan and the promotion goes on.
    # (Before: "inside the previous window", PromotionFailed retried every 300 s for ever,
    # the finalizer and so the namespace kept.)
    out = await deletion.finalize_session(s)
    assert not out.failed and out.state is SessionState.PROMOTING, out.message
    assert out.status["deletion"] == {"step": "promote"}  # stop and transcodes are done
    plan = await bucket.get_json(s.layout.promotion_plan_key)
    assert [c["index"] for c in plan["chunks"]] == [0]
    # the time only the left-out chunk covered is a gap, not cut from the recording
    assert plan["sessionEndMs"] == 9000
    assert plan["gaps"] == [{"startMs": 5000, "endMs": 9000, "cause": "chunk-failed"}]

    # Resumed at `collect` as if the promote step had never run (no plan stored), it is
    # not run again: deletion completes.
    await bucket.delete_keys([s.layout.promotion_plan_key])
    s = await set_status(ctx, s, {"deletion": {"step": "collect", "promoted": False,
                                               "recordingIds": []}})
    out = await deletion.finalize_session(s)
    assert out.done and out.state is SessionState.PROMOTED
    assert out.status["recordingIds"] == [] and out.status["deletion"]["step"] == "done"
    # neither promoted nor failed: their raw tracks are not collected (issue 11 item 1)
    kept = await bucket.list_keys(s.layout.chunks_root)
    assert {s.layout.raw_key(i, USERS[0], "ogg-opus") for i in (0, 1)} <= set(kept)
    assert await ctx.db.get_temp_recordings_for_meeting(s.meeting_id) == []
    # owned children are the garbage collector's: the finalizer leaves them
    assert len(await ctx.kube.list_chunks(namespace, "overlap")) == 2
    assert len(await ctx.kube.list_jobs(namespace, "overlap")) == 3  # 2 transcodes, promote
    again = await deletion.finalize_session(await set_status(ctx, s, out.status))
    assert again.done and again.status["deletion"] == out.status["deletion"]


async def test_a_database_outage_does_not_keep_the_recorder_recording(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Stopping needs no SQL: with PostgreSQL away, deleting a session still deletes its
    recorder pod, and only the steps that write SQL wait for the database. (Second review:
    the meeting-row repair ran before every step, so `/record stop` during an outage left
    the bot recording the channel until the database came back, and that audio was
    promoted.) The outage is real: a PostgreSQL URL on a port nothing listens on."""
    s = await make_session(ctx, kubectl, namespace, "db-away")
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    pod = recorder_pod_name("db-away")
    assert await ctx.kube.get_pod(namespace, pod) is not None
    await ctx.db.close()
    ctx.db = RecordingService.from_url(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres")

    out = await DeletionService(ctx).finalize_session(s)
    assert out.state is SessionState.STOPPING and not out.failed, out.message
    after = await ctx.kube.get_pod(namespace, pod)
    assert after is None or after["metadata"].get("deletionTimestamp"), after
    await ctx.kube.delete_pod(namespace, pod, 0)
    for _ in range(100):
        if await ctx.kube.get_pod(namespace, pod) is None:
            break
        await asyncio.sleep(0.1)
    # the recorder is gone: the next steps wait for the database, nothing is skipped
    out = await DeletionService(ctx).finalize_session(await set_status(ctx, s, out.status))
    assert out.progress.step is not DeletionStep.DONE and not out.failed, out.message


async def test_a_chosen_meeting_id_waits_for_the_database_a_derived_one_does_not(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Third review: with PostgreSQL away at start, a session whose spec.meetingId names a
    finished meeting (its session deleted, so the cluster knows no owner) started its
    recorder, recorded into that meeting's prefix and, once the database was back, froze
    on MeetingIdInUse. Now only a derived id (unique by construction) starts without the
    row; a chosen one waits (TemporaryFailure) and no recorder pod is made. The outage is
    real: a PostgreSQL URL on a port nothing listens on."""
    await ctx.db.close()
    ctx.db = RecordingService.from_url(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres")
    chosen = await make_session(ctx, kubectl, namespace, "chosen-id",
                                meetingId="c0ffee0123456789")
    with pytest.raises(TemporaryFailure, match=r"c0ffee0123456789 \(spec.meetingId\) not "
                                               r"confirmed"):
        await SessionService(ctx).ensure_session(chosen)
    assert await ctx.kube.get_pod(namespace, recorder_pod_name("chosen-id")) is None
    derived = await make_session(ctx, kubectl, namespace, "derived-id")
    status = await SessionService(ctx).ensure_session(derived)
    assert status["meetingId"] == derived.meeting_id
    assert await ctx.kube.get_pod(namespace, recorder_pod_name("derived-id")) is not None


async def test_record_writes_the_rows_a_killed_replica_left_behind(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A replica killed between a chunk's status patch (done) and its row write left the
    temp rows queued; the session is deleted before any observe timer audits it. The
    record step audits the mirror itself: before, it found no done row and failed the
    promotion ("no temp row is done in SQL") although the final tracks existed."""
    s = await make_session(ctx, kubectl, namespace, "killed")
    await SessionService(ctx).ensure_session(s)
    chunk = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    await ChunkService(ctx).ensure_chunk(chunk)  # rows queued
    outputs = [ChunkOutput(user_id=u, format="mp3", key=s.layout.chunk_output_key(0, u, "mp3"),
                           bytes=10, sha256="ef" * 32, duration_ms=5000) for u in USERS]
    assert await ctx.kube.patch_chunk_status(namespace, chunk.name, ChunkStatus(
        transcode_status=TranscodeStatus.DONE, track_count=2, tracks=outputs).to_api())
    # ... and the replica died here: no row write
    finals = [FinalTrack(track=u, kind="speaker", user_id=u, format="mp3",
                         key=s.layout.final_key(u, "mp3"), bytes=10, sha256="cd" * 32,
                         duration_ms=5000) for u in USERS]
    finals.append(FinalTrack(track="mix", kind="mixed", format="mp3",
                             key=s.layout.final_key("mix", "mp3"), bytes=10,
                             sha256="cd" * 32, duration_ms=5000))
    await ctx.store(s.spec.storage.bucket).put_json(s.layout.final_manifest_key, FinalManifest(
        tool_version="test", meeting_id=s.meeting_id, duration_ms=5000, recorded_ms=5000,
        paused_ms=0, tracks=finals).to_api())
    ctx.audited.add(s.ref.uid)  # audited before the kill, as a long-running replica has
    out = await DeletionService(ctx).record(
        s, DeletionProgress(step=DeletionStep.RECORD, promoted=True))
    assert out.step is DeletionStep.COLLECT and out.recording_ids
    recs = await ctx.db.get_recordings_for_meeting(s.meeting_id)
    assert sorted(str(r.kind) for r in recs) == ["mixed", "speaker", "speaker"]
    # the audit caught the mirror up (the rows stay, cleaned, until the collect step)
    rows = await ctx.db.get_temp_recordings_for_meeting(s.meeting_id)
    assert sorted(str(r.transcode_status) for r in rows) == ["done", "done"], rows
    assert {r.cleaned for r in rows} == {1}


async def test_a_session_nobody_spoke_in_is_promoted_to_no_recordings(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Chunks were sealed but nobody spoke (or everyone opted out): the chunks have no
    tracks, the operator marks them done without a Job, and the promotion Job writes a
    manifest without tracks. The record step writes no recordings row and the meeting
    ends `cancelled`. Before, it asked SQL to promote no track ("InvalidInputError"), a
    PromotionFailed retried every 300 s for ever: the finalizer was never released and the
    bot's `g-<guild>` session blocked every later `/record start` in that guild."""
    s = await make_session(ctx, kubectl, namespace, "mute")
    await SessionService(ctx).ensure_session(s)
    for index in range(2):
        doc = chunk_doc(s, index, index * 5000, index * 5000 + 5000, users=())
        apply(kubectl, doc)
        obj = await ctx.kube.get_chunk(namespace, chunk_name(s.ref.name, index))
        assert obj is not None
        status = await ChunkService(ctx).ensure_chunk(ChunkRef.from_object(obj))
        assert status.transcode_status is TranscodeStatus.DONE  # no tracks: no Job
        # no Job to freeze its spec: the operator stores the frozen copy later Jobs place
        # their pieces by (`voicetrack_transcoder.context`), outside the recorder's grant
        frozen = await ctx.store(s.spec.storage.bucket).get_json(
            s.layout.frozen_spec_key(index))
        assert frozen == ChunkRef.from_object(obj).spec.to_api()
    await ctx.store(s.spec.storage.bucket).put_json(s.layout.final_manifest_key, FinalManifest(
        tool_version="test", meeting_id=s.meeting_id, duration_ms=10000, recorded_ms=10000,
        paused_ms=0, tracks=[]).to_api())
    out = await DeletionService(ctx).record(
        s, DeletionProgress(step=DeletionStep.RECORD, promoted=True))
    assert out.step is DeletionStep.COLLECT and out.recording_ids == []
    assert await ctx.db.get_recordings_for_meeting(s.meeting_id) == []
    meeting = await ctx.db.get_meeting(s.meeting_id)
    assert (meeting.status, meeting.failure_reason) == ("cancelled", "no audio was recorded")


@pytest.mark.parametrize(("spoken", "status", "reason"), [
    ("failed", "failed", "TranscodeFailed: all 1 chunk(s) failed"),
    ("done", "cancelled", "every member recorded opted out"),
])
async def test_a_meeting_without_tracks_is_judged_by_its_chunks_as_they_are_now(
        ctx: Context, namespace: str, kubectl: Kubectl, spoken: str, status: str,
        reason: str) -> None:
    """A spoken chunk and a silent one; the manifest has no track. `failed`: the spoken
    chunk's transcode failed after deletion began (`status.chunks` stopped then and says
    no chunk failed): the meeting is `failed`, not `cancelled` as if nothing had been
    recorded (second review). `done`: its speaker opted out: `cancelled`, saying so."""
    s = await make_session(ctx, kubectl, namespace, f"judged-{spoken}")
    await SessionService(ctx).ensure_session(s)
    for index, users in ((0, (USERS[0],)), (1, ())):
        doc = chunk_doc(s, index, index * 5000, index * 5000 + 5000, users=users)
        await put_raws(ctx, s, doc)
        apply(kubectl, doc)
        await ctx.kube.patch_chunk_status(namespace, chunk_name(s.ref.name, index), {
            "transcodeStatus": spoken if users else "done"})
    s = await set_status(ctx, s, {"chunks": {"total": 2, "done": 1, "failed": 0}})
    await ctx.store(s.spec.storage.bucket).put_json(s.layout.final_manifest_key, FinalManifest(
        tool_version="test", meeting_id=s.meeting_id, duration_ms=10000, recorded_ms=10000,
        paused_ms=0, tracks=[]).to_api())
    out = await DeletionService(ctx).record(
        s, DeletionProgress(step=DeletionStep.RECORD, promoted=True))
    assert out.recording_ids == []
    meeting = await ctx.db.get_meeting(s.meeting_id)
    assert meeting.status == status and reason in (meeting.failure_reason or ""), meeting


async def test_empty_session_deletion_ends_the_meeting(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    s = await make_session(ctx, kubectl, namespace, "empty")
    await ctx.db.create_meeting(s.meeting_id, s.spec.guild_id, s.spec.channel_id,
                                datetime.now(UTC))
    out = await DeletionService(ctx).finalize_session(s)
    assert out.done and out.status["state"] == "Promoted"
    assert {c["type"]: c["status"] for c in out.status["conditions"]}["Promoted"] == "True"
    assert (await ctx.db.get_meeting(s.meeting_id)).status == "cancelled"


# ---------------------------------------------------------------- JanitorService


async def promoted_by_hand(ctx: Context, layout: MeetingLayout, bucket: str,
                           plan: tuple[int, ...] = (), *, ended: bool = True,
                           recordings: bool = True) -> None:
    """Make the meeting at `layout` look promoted to the orphan sweep
    (`services.janitor`): its row, ended a minute ago, a `recordings` row, and in `bucket`
    a stored promotion plan naming the chunk indices `plan` (none: no plan). Without
    `ended` or `recordings`, that part is left out."""
    await ctx.db.create_meeting(layout.meeting_id, layout.guild_id, snowflake(),
                                datetime.now(UTC) - timedelta(hours=1))
    if ended:
        await ctx.db.end_meeting(layout.meeting_id, datetime.now(UTC) - timedelta(minutes=1),
                                 "completed")
    if recordings:
        await ctx.db.insert_persistent_recording(
            layout.meeting_id, kind="mixed", object_key=layout.final_key("mix", "mp3"),
            sha256=SHA, size_bytes=1, duration_ms=10_000, format="mp3")
    if plan:
        chunks = [ChunkSpec(session_name="gone", meeting_id=layout.meeting_id,
                            guild_id=layout.guild_id, index=i, start_ms=i * 5000,
                            end_ms=i * 5000 + 5000,
                            tracks=[ChunkTrack(user_id=USERS[0],
                                               key=layout.raw_key(i, USERS[0], "ogg-opus"),
                                               frames=250, first_ms=i * 5000,
                                               last_ms=i * 5000 + 4980, bytes=100,
                                               sha256=SHA)])
                  for i in plan]
        doc = PromotionPlan(guild_id=layout.guild_id, meeting_id=layout.meeting_id,
                            prefix=layout.prefix, session_end_ms=5000 * (max(plan) + 1),
                            speakers=[USERS[0]], chunks=chunks)
        await ctx.store(bucket).put_json(layout.promotion_plan_key, doc.to_api())


async def test_janitor_beats_and_collects_only_parsed_keys_of_dead_meetings(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    janitor = JanitorService(ctx)
    assert await janitor.beat() is True
    beat = await ctx.db.read_heartbeat(SERVICE_NAME)
    assert beat is not None and beat.status == "ok"

    live = await make_session(ctx, kubectl, namespace, "live",
                              meetingId=f"live{secrets.token_hex(6)}")
    store = ctx.store(ctx.settings.s3.bucket)
    guild, dead = snowflake(), secrets.token_hex(8)
    # the sweep deletes only promoted folders (`test_janitor_safety`)
    await promoted_by_hand(ctx, MeetingLayout("recordings", guild, dead),
                           ctx.settings.s3.bucket, plan=(0,))
    keys = {
        "dead": f"recordings/{guild}/{dead}/chunks/000000/{USERS[0]}.ogg",
        "dead_outputs": f"recordings/{guild}/{dead}/outputs/000000/piece.json",
        "live": f"recordings/{live.spec.guild_id}/{live.meeting_id}/chunks/000000/u.ogg",
        "final": f"recordings/{guild}/{dead}/final/mix.mp3",
        # not written by the layout: the old string split took `notes` for a meeting id
        "foreign": f"recordings/notes-{dead}/chunks/readme.txt",
    }
    for key in keys.values():
        await store.put_json(key, {})
    await asyncio.sleep(2.2)  # older than the TTL (1 s; S3 times have whole seconds)
    await janitor.collect_orphans()
    left = set(await store.list_keys("recordings/"))
    assert keys["dead"] not in left and keys["dead_outputs"] not in left
    assert {keys["live"], keys["final"], keys["foreign"]} <= left


async def test_a_retried_collection_keeps_every_failed_chunks_reason(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Item 11. Collection is retried after a failed chunk's folder was collected and its
    RecordingChunk is gone: `final/failed-chunks.json` still lists it with its reason.
    (Before: it was rewritten from the chunks that remained.)"""
    s = await make_session(ctx, kubectl, namespace, "retried")
    await set_status(ctx, s, {"meetingId": s.meeting_id})
    store = ctx.store(s.spec.storage.bucket)
    for index, why in ((0, "boom"), (1, "bang")):
        chunk = await make_chunk(ctx, kubectl, s, index, index * 5000, index * 5000 + 5000)
        await ctx.kube.patch_chunk_status(namespace, chunk.name, {
            "transcodeStatus": "failed", "error": why})
        for user in USERS:
            await store.put_json(s.layout.raw_key(index, user, "ogg-opus"), {"raw": index})
    await collect_chunks(ctx, s)
    await ctx.kube.delete_chunk(namespace, chunk_name("retried", 0))
    await collect_chunks(ctx, s)  # the retry
    failed = (await store.get_json(s.layout.failed_manifest_key))["failed"]
    assert [(e["index"], e["userId"], e["error"]) for e in failed] == [
        (0, USERS[0], "boom"), (0, USERS[1], "boom"), (1, USERS[0], "bang"),
        (1, USERS[1], "bang")]
    for e in failed:
        assert await store.exists(e["key"]), e


async def test_collection_aborts_uploads_killed_mid_way_in_chunk_folders(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A recorder killed while uploading a large raw track (a multipart upload: PCM of a
    long chunk) leaves its parts, audio, in S3 where no listing of objects shows them.
    Collection aborts the incomplete uploads under the meeting's chunk and output folders
    (one listing each, not one per chunk folder); one elsewhere is left alone. (Before:
    deleting the folders' objects left the parts for good.)"""
    s = await make_session(ctx, kubectl, namespace, "killedupload")
    await set_status(ctx, s, {"meetingId": s.meeting_id})
    store = ctx.store(s.spec.storage.bucket)
    chunk = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    await ctx.kube.patch_chunk_status(namespace, chunk.name, {
        "transcodeStatus": "failed", "error": "boom"})
    client, bucket = store.sync.client, s.spec.storage.bucket
    raw = s.layout.raw_key(0, USERS[0], "pcm-s16le")
    elsewhere = f"{s.layout.root}/elsewhere.bin"
    ids = {key: client._create_multipart_upload(bucket, key, {}) for key in (raw, elsewhere)}
    client._upload_part(bucket, raw, os.urandom(64 * 1024), None, ids[raw], 1)

    def uploads() -> list[str]:
        return sorted(u.object_name or "" for u in client._list_multipart_uploads(
            bucket, prefix=s.layout.root + "/").uploads)

    assert uploads() == sorted([raw, elsewhere])
    await collect_chunks(ctx, s)
    assert uploads() == [elsewhere]
    client._abort_multipart_upload(bucket, elsewhere, ids[elsewhere])


async def test_a_lost_meeting_row_is_rebuilt_from_the_cluster(
        ctx: Context, namespace: str, kubectl: Kubectl, tmp_path: Path) -> None:
    """Item 3. The operator restarts on an empty database (the chart's SQLite in an
    emptyDir): observing the session rebuilds its meeting row (owner, start) and replays
    its chunk rows, and a deletion resumed at `collect` completes instead of failing as
    PromotionFailed for ever. (Before: the row stayed missing and collect raised
    NotFoundError on every try.)"""
    s = await make_session(ctx, kubectl, namespace, "amnesia")
    svc = SessionService(ctx)
    s = await set_status(ctx, s, await svc.ensure_session(s))
    chunk = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    await ChunkService(ctx).ensure_chunk(chunk)
    url = f"sqlite+aiosqlite:///{tmp_path / 'wiped.db'}"
    await asyncio.to_thread(migrate.upgrade_head, url)
    await ctx.db.close()
    ctx.db = RecordingService.from_url(url)  # the restart: an empty database at its head

    await svc.observe_session(s)
    meeting = await ctx.db.get_meeting(s.meeting_id)
    assert meeting.session_uid == s.ref.uid and meeting.guild_id == s.spec.guild_id
    assert meeting.started_at == datetime.fromisoformat(
        s.status["startedAt"].replace("Z", "+00:00"))
    rows = await ctx.db.get_temp_recordings_for_meeting(s.meeting_id)
    assert sorted(r.user_id for r in rows) == sorted(USERS)

    await ctx.db.close()
    ctx.db = RecordingService.from_url(url.replace("wiped", "wiped-again"))
    await asyncio.to_thread(migrate.upgrade_head, url.replace("wiped", "wiped-again"))
    s = await set_status(ctx, s, {"deletion": {"step": "collect", "promoted": False,
                                               "recordingIds": []}})
    out = await DeletionService(ctx).finalize_session(s)
    assert out.done and not out.failed, out.message
    assert (await ctx.db.get_meeting(s.meeting_id)).session_uid == s.ref.uid


async def test_janitor_sweeps_every_bucket_and_prefix_sessions_use(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Item 11. A session storing under its own (allowed) bucket and prefix: a dead
    meeting's chunk objects there are swept too, also after that session is gone.
    (Before: only the operator's bucket under `recordings/` was swept.)"""
    bucket, prefix = f"vt-other-{secrets.token_hex(3)}", "team/rec"
    ctx.settings = dataclasses.replace(ctx.settings, s3_buckets=frozenset({bucket}))
    live = await make_session(ctx, kubectl, namespace, "elsewhere",
                              storage={"bucket": bucket, "prefix": prefix})
    store = ctx.store(bucket)
    await store.ensure_bucket()
    dead_layout = MeetingLayout(prefix, snowflake(), secrets.token_hex(8))
    await promoted_by_hand(ctx, dead_layout, bucket, plan=(0,))
    dead = dead_layout.raw_key(0, USERS[0], "ogg-opus")
    mine = f"{prefix}/{live.spec.guild_id}/{live.meeting_id}/chunks/000000/{USERS[0]}.ogg"
    for key in (dead, mine):
        await store.put_json(key, {})
    await asyncio.sleep(2.2)  # older than the TTL (1 s; S3 times have whole seconds)
    janitor = JanitorService(ctx)
    await janitor.collect_orphans()
    assert set(await store.list_keys(f"{prefix}/")) == {mine, dead_layout.promotion_plan_key}
    kubectl("-n", namespace, "delete", "recsess", "elsewhere", "--wait=false")
    gone_layout = MeetingLayout(prefix, snowflake(), secrets.token_hex(8))
    await promoted_by_hand(ctx, gone_layout, bucket, plan=(1,))
    gone = gone_layout.raw_key(1, USERS[0], "ogg-opus")
    await store.put_json(gone, {})
    await asyncio.sleep(2.2)
    await janitor.collect_orphans()  # the session may still be listed: `mine` may stay
    assert gone not in set(await store.list_keys(f"{prefix}/"))


# ---------------------------------------------------------------- handlers


@pytest.fixture
def kopf_events() -> Any:
    """kopf's event posting context (set by the operator's run loop), so handlers that post
    events run as plain functions; yields the queue the events land in. The test binds
    the loop with `bind_events()` (a sync fixture cannot know the test's loop)."""
    import kopf
    from kopf._core.engines import posting  # private: the run loop sets these

    queue: asyncio.Queue[Any] = asyncio.Queue()
    tokens = [posting.settings_var.set(kopf.OperatorSettings()),
              posting.event_queue_var.set(queue)]  # type: ignore[arg-type]
    yield queue
    posting.settings_var.reset(tokens[0])  # type: ignore[arg-type]
    posting.event_queue_var.reset(tokens[1])  # type: ignore[arg-type]


def bind_events() -> None:
    """Post kopf events on the running loop (call at the start of an async test)."""
    from kopf._core.engines import posting

    posting.event_queue_loop_var.set(asyncio.get_running_loop())


async def test_handlers_called_directly(ctx: Context, namespace: str, kubectl: Kubectl,
                                        kopf_events: asyncio.Queue[Any]) -> None:
    import kopf

    from voicetrack_operator.handlers import chunk as chunk_handlers
    from voicetrack_operator.handlers import lifecycle
    from voicetrack_operator.handlers import session as session_handlers

    bind_events()
    memo = kopf.Memo()
    memo.ctx = ctx
    s = await make_session(ctx, kubectl, namespace, "direct")
    body = await ctx.kube.get_session(namespace, "direct")
    assert body is not None
    patch = kopf.Patch()
    await session_handlers.on_session_create(body=kopf.Body(body), memo=memo, patch=patch)
    assert patch["status"]["recorderPod"] == recorder_pod_name("direct")
    s = await set_status(ctx, s, dict(patch["status"]))
    event = await asyncio.wait_for(kopf_events.get(), 5)
    assert event.reason == "RecorderStarted"

    patch = kopf.Patch()
    await session_handlers.on_session_observe(body=kopf.Body(s.body), memo=memo, patch=patch)
    assert "conditions" not in patch.get("status", {})  # nothing moved

    doc = chunk_doc(s, 0, 0, 5000)
    await put_raws(ctx, s, doc)
    apply(kubectl, doc)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("direct", 0))
    await chunk_handlers.on_chunk_event(event={"type": "ADDED", "object": obj}, memo=memo)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("direct", 0))
    assert obj is not None and obj["status"]["transcodeStatus"] == "queued"
    job = await ctx.kube.get_job(namespace, transcode_job_name("direct", 0))
    assert job is not None
    job["status"] = {"conditions": [{"type": "Failed", "status": "True",
                                     "reason": "PodFailurePolicy", "message": "exit 2"}]}
    await chunk_handlers.on_transcode_job_event(event={"type": "MODIFIED", "object": job},
                                                memo=memo)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("direct", 0))
    assert obj is not None and obj["status"]["transcodeStatus"] == "failed"
    assert obj["status"]["error"].startswith("PodFailurePolicy: exit 2")

    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as err:  # the recorder is being stopped
        await session_handlers.on_session_delete(body=kopf.Body(s.body), memo=memo,
                                                 patch=patch)
    assert err.value.delay == 1 and patch["status"]["state"] == "Stopping"
    assert patch["status"]["deletion"] == {"step": "stop"}
    assert await lifecycle.on_probe_database(memo=memo) == "ok"


async def test_startup_builds_the_context_and_cleanup_closes_it(
        cluster: LocalCluster, crds: None, s3_server: S3Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, kopf_events: asyncio.Queue[Any]) -> None:
    import kopf

    from voicetrack_operator.handlers import lifecycle
    from voicetrack_operator.handlers import session as session_handlers

    for name, value in {**s3_server.env(), "VOICETRACK_METRICS_PORT": "0",
                        "VOICETRACK_KUBECONFIG": str(cluster.kubeconfig),
                        "VOICETRACK_DATABASE_URL":
                            f"sqlite+aiosqlite:///{tmp_path / 'startup.db'}"}.items():
        monkeypatch.setenv(name, value)
    bind_events()
    memo, settings = kopf.Memo(), kopf.OperatorSettings()
    await lifecycle.on_startup(settings=settings, memo=memo)
    try:
        assert settings.persistence.finalizer == "voicetrack.dev/promote"
        # the active replica's workers: heartbeat, orphan sweep, mirror audit
        assert isinstance(memo.ctx, Context) and len(memo.tasks) == 3
        assert await lifecycle.on_probe_database(memo=memo) == "ok"  # migrated at start
    finally:
        await lifecycle.on_cleanup(memo=memo)
    assert all(t.done() for t in memo.tasks)
    body = kopf.Body({"apiVersion": API_VERSION, "kind": "RecordingSession",
                      "metadata": {"name": "p", "namespace": "default", "uid": "u"}})
    await session_handlers.on_session_pause(body=body, old=False, new=True)
    event = await asyncio.wait_for(kopf_events.get(), 5)
    assert event.reason == "Paused"
