"""Sessions record only into buckets the operator allows (`OperatorSettings.allowed_buckets`:
its own bucket and VOICETRACK_S3_BUCKETS), and the orphan sweep lists only those, a page
at a time. Likewise they record only in namespaces whose NetworkPolicies confine their pods
when the operator is told which (`OperatorSettings.policy_namespaces`,
VOICETRACK_POLICY_NAMESPACES: issue 15).

The operator's services against the local API server, SeaweedFS and SQLite at its head,
as `test_operator_services`. Before the fix a session could name any bucket its S3 keys
reach (another install's, when installs share keys): its recorder got an upload grant
there, and the sweep followed every bucket a session ever named and listed it whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

import pytest

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import (
    USERS,
    make_chunk,
    make_session,
    promoted_by_hand,
    set_status,
    snowflake,
)
from tests.fixtures.cluster import Kubectl
from voicetrack.errors import NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.names import recorder_pod_name, transcode_job_name
from voicetrack.resources import TranscodeStatus
from voicetrack_operator.builders import recorder_service_account
from voicetrack_operator.context import Context
from voicetrack_operator.services.chunks import ChunkService
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.janitor import JanitorService
from voicetrack_operator.services.sessions import SessionService

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx
"""The services tests' context: admin client, SQLite at its head, SeaweedFS, TTL 1 s."""


def foreign_bucket() -> str:
    return f"vt-foreign-{secrets.token_hex(4)}"


async def test_a_session_naming_a_bucket_not_allowed_is_refused(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Fault 2: refused at start (Ready=False, reason BucketNotAllowed, the message names
    spec.storage.bucket and why); no recorder pod, no meeting row. Allowed by
    VOICETRACK_S3_BUCKETS, the same bucket starts."""
    bucket = foreign_bucket()
    s = await make_session(ctx, kubectl, namespace, "foreign", storage={"bucket": bucket})
    status = await SessionService(ctx).ensure_session(s)
    ready = {c["type"]: c for c in status.get("conditions") or []}.get("Ready") or {}
    assert status.get("state") == "Refused", status
    assert ready.get("reason") == "BucketNotAllowed", ready
    assert "spec.storage.bucket" in ready["message"] and bucket in ready["message"]
    assert "other installs" in ready["message"]
    assert await ctx.kube.get_pod(namespace, recorder_pod_name("foreign")) is None
    with pytest.raises(NotFoundError):
        await ctx.db.get_meeting(s.meeting_id)

    ctx.settings = dataclasses.replace(ctx.settings, s3_buckets=frozenset({bucket}))
    s = await make_session(ctx, kubectl, namespace, "allowed", storage={"bucket": bucket})
    status = await SessionService(ctx).ensure_session(s)
    assert status.get("state") != "Refused" and status.get("recorderPod"), status


async def test_deleting_a_session_refused_for_its_bucket_touches_nothing_there(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A session refused for its bucket, given a RecordingChunk by hand whose tracks are
    objects in that bucket (another install's, same layout): deleting it releases it at
    once, with no transcoder Job and nothing promoted or collected there. (Before: its
    deletion ran every step on that bucket, transcodes first, as for a refused session
    that recorded, and would have promoted over and collected the other install's
    chunks and `live/`.)"""
    bucket = foreign_bucket()
    await ctx.store(bucket).ensure_bucket()
    s = await make_session(ctx, kubectl, namespace, "pointed", storage={"bucket": bucket})
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    assert s.status["state"] == "Refused"
    await make_chunk(ctx, kubectl, s, 0, 0, 5000)  # its raw tracks: the victim's
    live = s.layout.live_key("mix", "mp3")
    await ctx.store(bucket).put_json(live, {"live": "another install's"})
    out = await DeletionService(ctx).finalize_session(s)  # as its deletion would
    assert out.done and out.state == "Refused", out.message
    assert await ctx.kube.get_job(namespace, transcode_job_name("pointed", 0)) is None
    assert await ctx.store(bucket).exists(live)
    assert await ctx.store(bucket).exists(s.layout.raw_key(0, USERS[0], "ogg-opus"))


async def test_a_chunk_of_a_session_refused_for_its_bucket_is_refused(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A RecordingChunk made by hand for a session refused for its bucket, its tracks
    objects in that bucket: refused (no Job, no rows), and the operator writes no
    `chunk.json` there. (Before: a transcoder Job was made to write into that bucket, and
    the operator wrote the chunk's spec over the other install's `chunk.json`.)"""
    bucket = foreign_bucket()
    await ctx.store(bucket).ensure_bucket()
    s = await make_session(ctx, kubectl, namespace, "pointed", storage={"bucket": bucket})
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    chunk = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    status = await ChunkService(ctx).ensure_chunk(chunk)
    assert status.transcode_status is TranscodeStatus.FAILED and status.refused, status
    assert "spec.storage.bucket" in status.refused
    assert await ctx.kube.get_job(namespace, transcode_job_name("pointed", 0)) is None
    assert not await ctx.store(bucket).exists(s.layout.chunk_manifest_key(0))


async def test_the_sweep_never_touches_a_bucket_not_allowed(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A session names another install's bucket, where a meeting whose id this install
    also knows (ids are unique per database only) looks promoted: the sweep neither lists
    that bucket nor remembers it. (Before: it swept every bucket a session named.)"""
    bucket = foreign_bucket()
    store = ctx.store(bucket)
    await store.ensure_bucket()
    victim = MeetingLayout("recordings", snowflake(), secrets.token_hex(8))
    await promoted_by_hand(ctx, victim, bucket, plan=(0,))
    raw = victim.raw_key(0, USERS[0], "ogg-opus")
    await store.put_json(raw, {"raw": "another install's"})
    await make_session(ctx, kubectl, namespace, "pointed", storage={"bucket": bucket})
    await asyncio.sleep(2.2)  # older than the TTL (1 s)
    janitor = JanitorService(ctx)
    assert (await janitor.collect_orphans())[0] == 0 and await store.exists(raw)
    assert not {b for b, _ in janitor.places} - ctx.settings.allowed_buckets


async def test_the_sweep_lists_a_page_at_a_time(ctx: Context) -> None:
    """`object_pages` (what the sweep lists with) yields the keys in order, `size` at a
    time."""
    bucket = foreign_bucket()
    store = ctx.store(bucket)
    await store.ensure_bucket()
    keys = [f"p/{i}" for i in range(5)]
    for key in keys:
        await store.put_json(key, {})
    pages = [[k for k, _ in page] async for page in store.object_pages("p/", size=2)]
    assert pages == [keys[:2], keys[2:4], keys[4:]]


def policed_only(ctx: Context, *namespaces: str) -> None:
    """Set the operator's NetworkPolicy namespaces (VOICETRACK_POLICY_NAMESPACES) on `ctx`."""
    ctx.settings = dataclasses.replace(ctx.settings, policy_namespaces=frozenset(namespaces))


async def test_a_session_in_a_namespace_without_network_policies_is_refused(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Issue 15: with VOICETRACK_POLICY_NAMESPACES set, a session in a namespace not on it
    (its recorder and transcoder pods would run with no NetworkPolicy) is refused at start
    (Ready=False, reason NoNetworkPolicy, the message naming metadata.namespace and the
    chart value): no recorder pod, no upload grant, no meeting row, nothing in S3; its
    deletion completes at once and writes nothing. Listed, the same namespace starts.
    (Before: every namespace started its recorder.)"""
    policed_only(ctx, "voicetrack", "team-a")
    s = await make_session(ctx, kubectl, namespace, "unpoliced")
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    ready = {c["type"]: c for c in s.status.get("conditions") or []}.get("Ready") or {}
    assert s.status.get("state") == "Refused", s.status
    assert ready.get("reason") == "NoNetworkPolicy", ready
    for part in ("metadata.namespace", namespace, "networkPolicy.namespaces", "unconfined"):
        assert part in ready["message"], (part, ready)
    assert await ctx.kube.get_pod(namespace, recorder_pod_name("unpoliced")) is None
    assert await ctx.kube.get_secret(namespace, recorder_service_account(s.ref)) is None
    with pytest.raises(NotFoundError):
        await ctx.db.get_meeting(s.meeting_id)
    store = ctx.store(s.spec.storage.bucket)
    out = await DeletionService(ctx).finalize_session(s)  # as its deletion would
    assert out.done and out.state == "Refused", out.message
    assert await store.list_keys(s.layout.root + "/") == []

    policed_only(ctx, "voicetrack", namespace)
    s = await make_session(ctx, kubectl, namespace, "policed")
    status = await SessionService(ctx).ensure_session(s)
    assert status.get("state") != "Refused" and status.get("recorderPod"), status
    assert await ctx.kube.get_pod(namespace, recorder_pod_name("policed")) is not None
    assert await ctx.kube.get_secret(namespace, recorder_service_account(s.ref)) is not None


async def test_a_session_refused_for_its_namespace_that_recorded_is_released_unpromoted(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A session refused for its namespace, given a RecordingChunk by hand whose raw
    tracks are in S3 (as a start whose status patch was lost leaves): the chunk is refused
    (no transcoder Job: it would run unconfined), and deleting the session releases it at
    once with no Job, its raw tracks left in S3 and nothing promoted."""
    policed_only(ctx, "voicetrack")
    s = await make_session(ctx, kubectl, namespace, "unpoliced")
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    assert s.status["state"] == "Refused"
    chunk = await make_chunk(ctx, kubectl, s, 0, 0, 5000)
    status = await ChunkService(ctx).ensure_chunk(chunk)
    assert status.transcode_status is TranscodeStatus.FAILED and status.refused, status
    assert "metadata.namespace" in status.refused
    store = ctx.store(s.spec.storage.bucket)
    before = sorted(await store.list_keys(s.layout.root + "/"))
    out = await DeletionService(ctx).finalize_session(s)
    assert out.done and out.state == "Refused", out.message
    assert await ctx.kube.get_job(namespace, transcode_job_name("unpoliced", 0)) is None
    assert sorted(await store.list_keys(s.layout.root + "/")) == before
    assert s.layout.raw_key(0, USERS[0], "ogg-opus") in before


async def test_a_session_started_before_the_namespace_check_keeps_recording(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A session the operator had started (`startedAt` set) but whose recorder pod it had
    not yet recorded in status when an upgrade turned the namespace check on is not
    refused: its pod is made and it will be promoted, as its chunks are. Before, it was
    Refused, and deletion then released it unpromoted: the audio it took stranded."""
    s = await make_session(ctx, kubectl, namespace, "halfway")
    s = await set_status(ctx, s, {"startedAt": "2026-12-05T00:00:00Z"})
    policed_only(ctx, "voicetrack")
    status = await SessionService(ctx).ensure_session(s)
    assert status.get("state") != "Refused" and status.get("recorderPod"), status
    assert await ctx.kube.get_pod(namespace, recorder_pod_name("halfway")) is not None
