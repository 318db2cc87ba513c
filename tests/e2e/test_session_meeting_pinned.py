"""A session stays with the meeting it started when its spec.meetingId was edited anyway (an
object under a CRD without the immutability rules: made before the upgrade, or a CRD that
Helm did not upgrade), and never writes a meeting another session owns.

The operator's services against the local API server (the CRDs, then a copy of the session
CRD without its transition rules while the test edits the spec), SeaweedFS and SQLite at
its head; no operator process (as `test_operator_services`). Before the fix the view took
the meeting id from the spec: the started session's chunks were refused as not its own,
its meeting row was rebuilt under the edited id, and a session pointed at another's meeting
wrote into it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import yaml

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import (
    USERS,
    make_chunk,
    make_session,
    read_session,
    set_status,
)
from tests.fixtures.cluster import Kubectl
from voicetrack.db.meetings import MeetingIdInUse
from voicetrack.errors import NotFoundError
from voicetrack.manifests import FinalTrack
from voicetrack.names import derive_meeting_id
from voicetrack.resources import SessionState, TranscodeStatus
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import CRD_DIR, install_crds
from voicetrack_operator.context import Context
from voicetrack_operator.services.chunks import ChunkService
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.sessions import SessionService

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx
"""The services tests' fixtures: the CRDs installed, a real operator context (admin
client, SQLite at its head, SeaweedFS)."""

def fresh_meeting_id() -> str:
    """A fresh spec.meetingId: the sessions of other tests may still hold one (their
    namespaces go in the background)."""
    return secrets.token_hex(8)


@contextmanager
def without_transition_rules(cluster: LocalCluster, kubectl: Kubectl) -> Iterator[None]:
    """The session CRD as it was before the immutability rules (every rule on `oldSelf`
    left out) for the block; the CRDs of `voicetrack/crds/` again after it."""
    crd = yaml.safe_load((CRD_DIR / "recordingsessions.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validations"] = [r for r in spec["x-kubernetes-validations"]
                                        if "oldSelf" not in r["rule"]]
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd))
    try:
        yield
    finally:
        install_crds(cluster.kubeconfig)


def edit_spec(kubectl: Kubectl, ns: str, name: str, spec: dict[str, object]) -> None:
    """Merge-patch the session's spec, retrying while the API server still applies the
    CRD it had (a CRD update reaches its validation within moments)."""
    deadline = time.monotonic() + 20
    while True:
        proc = kubectl("-n", ns, "patch", "recsess", name, "--type=merge",
                       "-p", json.dumps({"spec": spec}), check=False)
        if proc.returncode == 0:
            return
        assert "immutable" in proc.stderr and time.monotonic() < deadline, proc.stderr
        time.sleep(0.3)


async def test_an_edited_meeting_id_does_not_move_a_started_session(
        ctx: Context, cluster: LocalCluster, namespace: str, kubectl: Kubectl) -> None:
    mid, edited = fresh_meeting_id(), fresh_meeting_id()
    s = await make_session(ctx, kubectl, namespace, "pinned", meetingId=mid)
    svc = SessionService(ctx)
    s = await set_status(ctx, s, await svc.ensure_session(s))
    assert s.status["meetingId"] == mid
    chunk = await make_chunk(ctx, kubectl, s, 0, 0, 5000)  # under the meeting it started
    with without_transition_rules(cluster, kubectl):
        edit_spec(kubectl, namespace, "pinned", {"meetingId": edited})
    status = await ChunkService(ctx).ensure_chunk(chunk)  # the recorder's next chunk
    assert status.transcode_status is TranscodeStatus.QUEUED, status.error  # not refused
    s = await read_session(ctx, namespace, "pinned")
    assert s.spec.meeting_id == edited
    assert s.meeting_id == mid  # the recorded meeting wins
    await svc.observe_session(s)
    rows = await ctx.db.get_temp_recordings_for_meeting(mid)
    assert sorted(str(r.user_id) for r in rows) == sorted(USERS)
    meeting = await ctx.db.get_meeting(mid)
    assert meeting.status == "recording" and meeting.session_uid == s.ref.uid
    with pytest.raises(NotFoundError):  # no meeting made under the edited id
        await ctx.db.get_meeting(edited)


async def test_a_session_never_writes_another_sessions_meeting(
        ctx: Context, cluster: LocalCluster, namespace: str, kubectl: Kubectl) -> None:
    """A session without a recorded meeting id (its status lost it) whose spec.meetingId
    was edited to another session's: it fails naming the owner, its deletion stops at
    PromotionFailed, and the SQL writes naming it are refused; the other meeting is left
    as it was."""
    mid = fresh_meeting_id()
    victim = await make_session(ctx, kubectl, namespace, "victim", meetingId=mid)
    svc = SessionService(ctx)
    victim = await set_status(ctx, victim, await svc.ensure_session(victim))
    thief = await make_session(ctx, kubectl, namespace, "thief")
    started = await svc.ensure_session(thief)
    thief = await set_status(ctx, thief, {**started, "meetingId": None})
    assert thief.meeting_id == derive_meeting_id(thief.ref.uid)
    with without_transition_rules(cluster, kubectl):
        edit_spec(kubectl, namespace, "thief", {"meetingId": mid})
    thief = await read_session(ctx, namespace, "thief")
    assert thief.meeting_id == mid

    patch = await svc.observe_session(thief)
    assert patch["state"] == SessionState.FAILED.value, patch
    assert victim.ref.uid in patch["recorderFailure"], patch

    thief = await set_status(ctx, thief, {**patch, "deletion": {"step": "transcodes"}})
    out = await DeletionService(ctx).finalize_session(thief)
    assert out.failed and out.state is SessionState.PROMOTION_FAILED, out.message
    assert f"belongs to session {victim.ref.uid}" in out.message

    # the storage layer refuses each write that names the thief as the writer
    with pytest.raises(MeetingIdInUse, match=victim.ref.uid):
        await ctx.db.upsert_chunk_status(thief.ref.uid, 0, USERS[0], mid,
                                         thief.spec.guild_id, "k", "ogg-opus", "queued")
    now = datetime.now(UTC)
    with pytest.raises(MeetingIdInUse):
        await ctx.db.end_meeting(mid, now, "cancelled", "stolen",
                                 session_uid=thief.ref.uid)
    track = FinalTrack(track="mix", kind="mixed", format="mp3", key="x/final/mix.mp3", bytes=1,
                       sha256="ab" * 32, duration_ms=1)
    with pytest.raises(MeetingIdInUse):
        await ctx.db.promote_temp_recordings_to_persistent(mid, "mixed", [track],
                                                           session_uid=thief.ref.uid)
    with pytest.raises(MeetingIdInUse):
        await ctx.db.delete_temp_recordings(mid, session_uid=thief.ref.uid)
    meeting = await ctx.db.get_meeting(mid)
    assert meeting.status == "recording" and meeting.session_uid == victim.ref.uid
    # the owner itself writes as before
    ended = await ctx.db.end_meeting(mid, now, "cancelled", "test",
                                     session_uid=victim.ref.uid)
    assert ended.status == "cancelled"


async def test_the_session_that_made_the_meeting_row_keeps_it_whatever_the_index_says(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Fault 5. Two sessions ask for one spec.meetingId; the younger one started (its
    meeting row and recorder made) but the status patch saying so was lost, so the
    cluster shows it unstarted, while the older one never started. Starting again, the
    younger one keeps its meeting: the row names it. The older one is refused. (Before:
    the older rival refused the younger one, which had recorded: its deletion then
    released its audio unpromoted.)"""
    mid = fresh_meeting_id()
    older = await make_session(ctx, kubectl, namespace, "older", meetingId=mid)
    younger = await make_session(ctx, kubectl, namespace, "younger", meetingId=mid)
    await ctx.db.create_meeting(mid, younger.spec.guild_id, younger.spec.channel_id,
                                datetime.now(UTC), younger.ref.uid,
                                namespace=namespace, session_name="younger")
    svc = SessionService(ctx)
    status = await svc.ensure_session(younger)
    assert status.get("state") != SessionState.REFUSED and status.get("recorderPod"), status
    assert status["meetingId"] == mid
    status = await svc.ensure_session(older)
    ready = {c["type"]: c for c in status.get("conditions") or []}["Ready"]
    assert status["state"] == SessionState.REFUSED and ready["reason"] == "MeetingIdInUse"
    assert (await ctx.db.get_meeting(mid)).session_uid == younger.ref.uid
