"""The observe timer on the watches' view (issue 16): `SessionService.observe_session` with an
`Observed` reads nothing from the API (but its session's upload grant Secret, at most every
`services.grants.GRANT_CHECK_S`: primed here as just checked), counts the chunks it is
given, and its safety net acts only on what the event handlers cannot have done (old
chunks, Jobs ahead of chunks).
The indexes' value shape (`handlers/index.py`) is checked on a real kopf Body."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from voicetrack.chunkspec import ChunkSpec, ChunkTrack
from voicetrack.errors import NotFoundError
from voicetrack.names import chunk_name, meeting_id_for, owner_reference, transcode_job_name
from voicetrack.objectstore import S3Settings
from voicetrack.resources import (
    API_VERSION,
    CHUNK_KIND,
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
)
from voicetrack.uploadgrant import UploadGrant
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.handlers.index import (
    chunk_index,
    job_index,
    known_chunk,
    observed,
    slim,
)
from voicetrack_operator.services import grants, sessions
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import Observed, SessionView

pytestmark = pytest.mark.unit

UID = "0f0e0d0c-0000-4000-8000-000000000001"
NS, NAME = "ns1", "s1"
USER = "400000000000000021"


class NoApi:
    """A KubeAdapter stand-in that fails every call: the indexed path must make none."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kw: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"API call {name} on the indexed observe path")
        return call


@dataclass
class FakeDb:
    meetings: set[str] = field(default_factory=set)
    reads: int = 0

    async def get_meeting(self, meeting_id: str) -> Any:
        self.reads += 1
        if meeting_id not in self.meetings:
            raise NotFoundError(meeting_id)
        return SimpleNamespace(id=meeting_id, session_uid=None)  # a row without an owner


def make_ctx(db: FakeDb) -> tuple[Context, NoApi]:
    kube = NoApi()
    settings = OperatorSettings(database_url="sqlite+aiosqlite://",
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"),
                                pods=PodSettings(),
                                live_interval_s=0)  # live Jobs: test_operator_live.py
    ctx = Context(settings=settings, kube=kube, db=db)  # type: ignore[arg-type]
    ctx.audited.add(UID)  # the mirror audit: tests/integration/test_operator_mirror_audit.py
    return ctx, kube


def session_view() -> SessionView:
    return SessionView.parse({
        "apiVersion": API_VERSION, "kind": "RecordingSession",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"guildId": "100000000000000001", "channelId": "100000000000000002"},
        "status": {"startedAt": "2026-01-01T00:00:00Z", "recorderPod": f"{NAME}-rec",
                   "meetingId": meeting_id_for(UID, None)},
    })


def chunk(index: int, status: str | None, age_s: float) -> dict[str, Any]:
    meeting = meeting_id_for(UID, None)
    key = f"recordings/100000000000000001/{meeting}/chunks/{index:06d}/{USER}.opus"
    spec = ChunkSpec(session_name=NAME, meeting_id=meeting, guild_id="100000000000000001",
                     index=index, start_ms=index * 10_000, end_ms=(index + 1) * 10_000,
                     tracks=[ChunkTrack(user_id=USER, key=key, frames=500, first_ms=0,
                                        last_ms=9980, bytes=10, sha256="ab" * 32)])
    created = datetime.now(UTC) - timedelta(seconds=age_s)
    return {"apiVersion": API_VERSION, "kind": CHUNK_KIND,
            "metadata": {"name": chunk_name(NAME, index), "namespace": NS,
                         "uid": f"c{index}", "resourceVersion": "1",
                         "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "labels": {LABEL_SESSION: NAME},
                         "ownerReferences": [owner_reference(NAME, UID)]},
            "spec": spec.to_api(),
            "status": {"transcodeStatus": status} if status else {}}


def job(index: int, complete: bool) -> dict[str, Any]:
    return {"metadata": {"name": transcode_job_name(NAME, index), "namespace": NS,
                         "labels": {LABEL_SESSION: NAME, LABEL_COMPONENT: "transcoder",
                                    LABEL_CHUNK_INDEX: str(index)},
                         "ownerReferences": [owner_reference(NAME, UID)]},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]}
            if complete else {"active": 1}}


RUNNING_POD = {"metadata": {"name": f"{NAME}-rec", "namespace": NS,
                            "ownerReferences": [owner_reference(NAME, UID)]},
               "spec": {}, "status": {"phase": "Running"}}


@pytest.fixture(autouse=True)
def _fresh_grant() -> None:
    # the session's upload grant was just checked and is far from due: the grant Secret is
    # read at most every GRANT_CHECK_S (tests/unit/test_upload_grant_renewal.py)
    grants._remember(UID, fresh_grant(), datetime.now(UTC), renewable=True)


def fresh_grant() -> UploadGrant:
    now = datetime.now(UTC)
    return UploadGrant.model_validate({
        "bucket": "voicetrack", "prefix": "recordings/", "expiresAt": now + timedelta(hours=2),
        "fields": {"x-amz-date": now.strftime("%Y%m%dT%H%M%SZ")}})


async def test_observe_on_the_watches_view_reads_no_api_and_counts_chunks() -> None:
    db = FakeDb({meeting_id_for(UID, None)})
    ctx, kube = make_ctx(db)
    seen = Observed(pod=RUNNING_POD, chunks=[chunk(0, "done", 30), chunk(1, "in_progress", 1)],
                    jobs=[job(1, complete=False)])
    changed = await SessionService(ctx).observe_session(session_view(), seen)
    assert kube.calls == []
    assert changed["chunks"] == {"total": 2, "queued": 0, "inProgress": 1, "done": 1,
                                 "failed": 0}


async def test_the_meeting_row_is_checked_at_most_every_30_s_per_session() -> None:
    db = FakeDb({meeting_id_for(UID, None)})
    ctx, _ = make_ctx(db)
    service, s = SessionService(ctx), session_view()
    for _ in range(5):
        await service.observe_session(s, Observed(pod=RUNNING_POD))
    assert db.reads == 1  # was one SELECT per session per tick before issue 16


async def test_safety_net_ensures_old_chunks_and_observes_jobs_ahead_only() -> None:
    db = FakeDb({meeting_id_for(UID, None)})
    ctx, kube = make_ctx(db)
    service = SessionService(ctx)
    ensured: list[int] = []
    observed_jobs: list[str] = []

    async def ensure_chunk(c: Any) -> Any:
        ensured.append(c.spec.index)

    async def observe_job(j: dict[str, Any]) -> None:
        observed_jobs.append(j["metadata"]["name"])

    service.chunks.ensure_chunk = ensure_chunk  # type: ignore[method-assign]
    service.chunks.observe_job = observe_job  # type: ignore[method-assign]
    seen = Observed(pod=RUNNING_POD, chunks=[
        chunk(0, None, 60),        # event missed long ago: ensured
        chunk(1, None, 1),         # new: the event handler's, left alone
        chunk(2, "queued", 60),    # its Job is gone (TTL): ensured again
        chunk(3, "queued", 60),    # its Job completed, the event was missed: observed
        chunk(4, "queued", 1),     # Job not in the view yet: left alone
        chunk(5, "done", 60),      # terminal: nothing
    ], jobs=[job(3, complete=True)])
    await service.observe_session(session_view(), seen)
    assert ensured == [0, 2]
    assert observed_jobs == [transcode_job_name(NAME, 3)]
    assert kube.calls == []


def test_index_values_are_plain_slim_objects() -> None:
    raw = chunk(7, "queued", 5)
    raw["metadata"]["managedFields"] = [{"manager": "x"}]
    body = kopf.Body(raw)
    value = chunk_index(body=body, namespace=NS, labels=body.metadata.labels)
    assert value is not None
    (key, obj), = value.items()
    assert key == (NS, NAME)
    assert "managedFields" not in obj["metadata"] and type(obj["spec"]) is dict
    assert obj["spec"] == raw["spec"] and obj["status"] == raw["status"]
    j = job(7, complete=True)
    j["spec"] = {"template": {"spec": {"containers": [{"args": ["--chunk-json", "{}"]}]}}}
    jv = job_index(body=kopf.Body(j), namespace=NS, labels=kopf.Body(j).metadata.labels)
    assert jv is not None and "spec" not in jv[(NS, NAME)]
    assert slim(kopf.Body({"metadata": {"name": "x"}}))["metadata"] == {"name": "x"}


def test_observed_picks_the_sessions_entries() -> None:
    c = chunk(0, "done", 1)
    indexes = {"chunk_index": {(NS, NAME): [c], (NS, "other"): [chunk(1, None, 1)]},
               "job_index": {}, "recorder_index": {(NS, NAME): [RUNNING_POD]}}
    seen = observed(NS, NAME, indexes)
    assert seen is not None
    assert seen.chunks == [c] and seen.jobs == [] and seen.pod == RUNNING_POD
    none = observed(NS, "none", indexes)
    assert none is not None and none.pod is None
    assert observed(NS, NAME, {}) is None  # called outside kopf: the API path


async def test_a_session_not_started_yet_is_not_observed() -> None:
    """Under load the timer's first tick came before the create handler had written the
    meeting row: it rebuilt the row from the creation time and marked the session out of
    sync (50 of 50 sessions in the first scale run)."""
    db = FakeDb()
    ctx, kube = make_ctx(db)
    s = session_view()
    s.status = {}
    assert await SessionService(ctx).observe_session(s, Observed(pod=None)) == {}
    assert db.reads == 0 and kube.calls == [] and not ctx.unsynced


async def test_a_pod_without_started_at_past_the_safety_age_finishes_the_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf stores the start handler's success before its status patch: an operator killed
    between the two left the recorder pod running and `startedAt` unset for good (issue 11,
    scenario 1 at the real process). A pod younger than `SAFETY_NET_AGE_S` is the create
    handler's own, its patch on the way: left alone; an older one finishes the start."""
    ctx, kube = make_ctx(FakeDb())
    started: list[str] = []

    async def ensure_session(self: SessionService, s: SessionView) -> dict[str, Any]:
        started.append(s.ref.name)
        return {"startedAt": "from the pod"}

    monkeypatch.setattr(SessionService, "ensure_session", ensure_session)

    def pod(age_s: float, owner_uid: str = UID) -> dict[str, Any]:
        created = datetime.now(UTC) - timedelta(seconds=age_s)
        return {**RUNNING_POD, "metadata": {
            **RUNNING_POD["metadata"], "ownerReferences": [owner_reference(NAME, owner_uid)],
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")}}

    s = session_view()
    s.status = {}
    svc = SessionService(ctx)
    assert await svc.observe_session(s, Observed(pod=pod(2))) == {}
    assert await svc.observe_session(s, Observed(pod=pod(60, owner_uid="other"))) == {}
    assert started == [] and kube.calls == []
    age = sessions.SAFETY_NET_AGE_S + 5
    assert await svc.observe_session(s, Observed(pod=pod(age))) == {"startedAt": "from the pod"}
    assert started == [NAME]


async def test_progress_is_patched_once_per_chunk_period_state_at_once() -> None:
    """The first scale runs made two status patches per chunk (one when it appeared, one
    when it was done): counts now wait for the chunk period, a new state does not."""
    db = FakeDb({meeting_id_for(UID, None)})
    ctx, _ = make_ctx(db)
    service, s = SessionService(ctx), session_view()
    s.spec.limits.delete_when_stopped = False  # kept Stopped: test_operator_autostop.py
    first = await service.observe_session(s, Observed(pod=RUNNING_POD,
                                                      chunks=[chunk(0, "done", 30)]))
    assert first["state"] == "Recording" and first["chunks"]["total"] == 1
    s.status.update(first)
    more = Observed(pod=RUNNING_POD, chunks=[chunk(0, "done", 30), chunk(1, "queued", 1)],
                    jobs=[job(1, complete=False)])
    more.chunks[1]["status"] = {"transcodeStatus": "in_progress"}
    assert await service.observe_session(s, more) == {}  # progress only, within 10 s
    stopped = {**RUNNING_POD, "status": {"phase": "Succeeded"}}
    changed = await service.observe_session(s, Observed(pod=stopped, chunks=more.chunks,
                                                        jobs=more.jobs))
    assert changed["state"] == "Stopped" and changed["chunks"]["total"] == 2
    ctx.progress_patched[UID] -= 10  # the chunk period has passed
    s.status.update(changed)
    s.status["chunks"] = first["chunks"]
    assert (await service.observe_session(s, Observed(pod=stopped, chunks=more.chunks,
                                                      jobs=more.jobs)))["chunks"]["total"] == 2


def started_job(index: int, seconds_ago: float) -> dict[str, Any]:
    j = job(index, complete=False)
    started = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    j["status"]["startTime"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    return j


async def test_a_quick_transcode_skips_in_progress_and_a_known_chunk_is_not_read() -> None:
    """Each Job event read its chunk from the API (six reads per chunk) and a running Job
    cost a chunk patch even when it completed a second later."""
    ctx, kube = make_ctx(FakeDb())
    service = SessionService(ctx).chunks
    await service.observe_job(started_job(1, 1))           # just started: no write yet
    await service.observe_job(job(1, complete=True), known=chunk(1, "done", 30))
    await service.observe_job(job(1, complete=False))      # no startTime: just started
    assert kube.calls == []
    with pytest.raises(AssertionError):                    # running 6 s: read and written
        await service.observe_job(started_job(1, 6))
    assert kube.calls == ["get_chunk"]


def test_known_chunk_is_the_jobs_own_from_the_index() -> None:
    c = chunk(1, "queued", 5)
    indexes = {"chunk_index": {(NS, NAME): [chunk(0, "done", 5), c]}}
    assert known_chunk(job(1, complete=True), indexes) == c
    assert known_chunk(job(2, complete=True), indexes) is None
    other = job(1, complete=True)
    other["metadata"]["ownerReferences"] = [owner_reference(NAME, "another-uid")]
    assert known_chunk(other, indexes) is None


async def test_a_finished_session_leaves_nothing_behind_in_the_replica() -> None:
    """A long-running operator sees thousands of sessions a day: once a session's deletion
    is done, the replica keeps no per-session entry (issue 16; the throttle clocks were
    module-level dicts that kept every session's uid and meeting id for good)."""
    db = FakeDb(meetings={meeting_id_for(UID, None)})
    ctx, _ = make_ctx(db)
    service, s = SessionService(ctx), session_view()
    s.status.update(await service.observe_session(s, Observed(pod=RUNNING_POD,
                                                              chunks=[chunk(0, "done", 30)])))
    s.status.update(await service.observe_session(
        s, Observed(pod=RUNNING_POD, chunks=[chunk(0, "done", 30), chunk(1, "done", 30)])))
    await service.repair_meeting(s, throttle=True)
    assert UID in ctx.progress_patched and s.meeting_id in ctx.meeting_checked
    ctx.live_launched[UID], ctx.live_tries[UID] = 1.0, (2, 3)
    s.status["deletion"] = {"step": "done", "promoted": True, "recordingIds": ["1"]}
    out = await DeletionService(ctx).finalize_session(s)
    assert out.state == "Promoted"
    assert (ctx.audited, ctx.progress_patched, ctx.meeting_checked) == (set(), {}, {})
    assert (ctx.live_launched, ctx.live_tries) == ({}, {})


async def test_a_turn_to_active_forgets_the_last_turns_clocks() -> None:
    """Another replica acted while this one stood by: its clocks are stale."""
    ctx, _ = make_ctx(FakeDb())
    ctx.progress_patched[UID] = 1.0
    ctx.meeting_checked["m"] = 1.0
    ctx.live_launched[UID], ctx.live_tries[UID] = 1.0, (2, 3)
    ctx.turned_active()
    assert (ctx.audited, ctx.progress_patched, ctx.meeting_checked) == (set(), {}, {})
    assert (ctx.live_launched, ctx.live_tries) == ({}, {})
