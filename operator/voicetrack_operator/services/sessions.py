"""Sessions while they live: refuse a busy guild (`services.admission`), start the
recorder, keep the status current, replay SQL after an outage. A session as these read
it is `services.sessionview`; deletion is `services.deletion`.

Every method is level-based: it reads what exists, does what is missing, and returns.
Calling any of them twice has the effect of calling it once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from voicetrack.db.meetings import MeetingIdInUse, check_owner
from voicetrack.errors import NotFoundError, TemporaryFailure
from voicetrack.names import controller_uid, recorder_pod_name
from voicetrack.resources import (
    LABEL_CHUNK_INDEX,
    SessionState,
    TranscodeStatus,
    check_session_name,
)
from voicetrack_operator.builders import build_recorder_pod, build_recorder_rbac
from voicetrack_operator.context import Context
from voicetrack_operator.services.admission import (
    NO_NETWORK_POLICY,
    bucket_refusal,
    busy_guild,
    guild_rival,
    meeting_owner,
    namespace_refusal,
)
from voicetrack_operator.services.autostop import delete_stopped, recorder_end, stopped_by_itself
from voicetrack_operator.services.chunkmirror import audit_mirror, resync_chunks
from voicetrack_operator.services.chunks import ChunkService
from voicetrack_operator.services.chunkstate import job_state
from voicetrack_operator.services.consent import note_degraded_consent
from voicetrack_operator.services.failures import recorder_failure
from voicetrack_operator.services.grants import forget_grant, renew_upload_grant
from voicetrack_operator.services.isolation import ensure_recorder_access
from voicetrack_operator.services.live import LiveService, LiveTick
from voicetrack_operator.services.sessionview import Observed, SessionView, parse_time, rfc3339
from voicetrack_operator.services.unparsable import usable_chunks
from voicetrack_operator.status import ChunkView, Observation, build_status, status_changed

log = logging.getLogger(__name__)

SAFETY_NET_AGE_S = 10.0
"""The observe timer re-ensures a chunk from the watches' view only when it is older than
this (seconds): a younger one is the event handler's, and the view may lag its Job."""

MEETING_CHECK_S = 30.0
"""How often the observe timer checks that the session's meeting row still exists
(seconds): a SELECT per session per tick was most of its SQL load."""


TERMINAL = (TranscodeStatus.DONE.value, TranscodeStatus.FAILED.value)


def _significant(status: dict[str, Any]) -> tuple[Any, ...]:
    """What of a status must reach the API at once: state, generation, failure and every
    condition's (type, status, reason) but TranscodesComplete's, which flips with every
    chunk. The rest (chunk counts, recorded seconds, speakers, bytes, messages) is
    progress, coalesced to one patch per chunk period (issue 16: two patches per chunk)."""
    conditions = tuple((c.get("type"), c.get("status"), c.get("reason"))
                       for c in status.get("conditions") or []
                       if c.get("type") != "TranscodesComplete")
    return (status.get("state"), status.get("observedGeneration"),
            status.get("recorderFailure"), conditions)


class SessionService:
    """Decides what happens to sessions; handlers call one method each."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.chunks = ChunkService(ctx)

    # ------------------------------------------------------------------ start

    async def ensure_session(self, s: SessionView) -> dict[str, Any]:
        """Start (or, after an operator restart, keep) the session: refuse a namespace
        without NetworkPolicies (`admission.namespace_refusal`), a bucket the operator does
        not allow (`admission.bucket_refusal`) and a busy guild, write the meeting row, make
        the recorder's RBAC and Pod. Returns status fields.

        With the database away the recorder starts anyway on a derived meeting id (unique:
        it comes from the uid; the row is written later) but not on a chosen
        `spec.meetingId`, which another session's meeting may already have: TemporaryFailure
        until the database confirms it (third review: such a session recorded into, and
        then promoted over, a finished meeting)."""
        if s.state is SessionState.REFUSED:
            return {}
        if s.status.get("startedAt") and s.status.get("recorderPod"):
            return await self.observe_session(s)  # an operator restart: keep, don't reset
        try:  # the CRD says so too, once it is upgraded (Helm does not upgrade CRDs)
            check_session_name(s.ref.name)
        except ValueError as err:
            return self._refused(s, f"{err}: its recorder could write no chunk",
                                 "NameTooLong")
        # a session already started (its recorder pod may be on its way) keeps recording
        # and is promoted, as its chunks are (`ChunkService.refusal`): an upgrade that
        # turns the check on never strands audio a session took
        if not s.status.get("startedAt") and (
                why := namespace_refusal(self.ctx.settings, s.ref.namespace)):
            return self._refused(s, why, NO_NETWORK_POLICY)
        if why := bucket_refusal(self.ctx, s):
            return self._refused(s, why, "BucketNotAllowed")
        busy = await busy_guild(self.ctx, s)
        if busy:
            return self._refused(s, f"guild {s.spec.guild_id} is already recorded by session "
                                 f"{busy}: a bot can be in one voice channel per guild")
        started = s.status.get("startedAt") or await self.pod_started_at(s) \
            or rfc3339(datetime.now(UTC))
        started_dt = parse_time(started)
        meeting = s.meeting_id
        owner = await meeting_owner(self.ctx, s)
        if owner:
            return self._refused(s, f"meeting id {meeting} belongs to session {owner}; "
                                 "choose another spec.meetingId (or leave it out)",
                                 "MeetingIdInUse")
        try:
            await self.ctx.db.create_meeting(meeting, s.spec.guild_id, s.spec.channel_id,
                                             started_dt, s.ref.uid, namespace=s.ref.namespace,
                                             session_name=s.ref.name)
            db_ok = True
        except MeetingIdInUse as err:
            return self._refused(s, f"{err}; choose another spec.meetingId (or leave it out)",
                                 "MeetingIdInUse")
        except TemporaryFailure as err:
            if s.spec.meeting_id:  # a chosen id may be taken: only the row can say
                raise TemporaryFailure(
                    f"meeting id {meeting} (spec.meetingId) not confirmed as this "
                    f"session's: {err}; the recorder starts once the database answers",
                    err.delay) from err
            log.warning("meeting row for %s deferred: %s", s.ref.name, err)
            self.ctx.unsynced[(s.ref.namespace, s.ref.name)] = str(err)
            db_ok = False
        for manifest in build_recorder_rbac(s.ref.namespace):
            await self.ctx.kube.ensure(manifest)
        await ensure_recorder_access(self.ctx, s.ref, s.spec, meeting, started_dt)
        started_ms = int(started_dt.timestamp() * 1000)
        pod = build_recorder_pod(s.ref, s.spec, meeting, started_ms, self.ctx.settings.pods)
        await self.ctx.kube.ensure(pod)
        obs = Observation(generation=s.generation, paused=s.spec.paused,
                          recorder_phase="Pending", database_synced=db_ok,
                          database_message="" if db_ok else "meeting row pending")
        status = build_status(obs, s.status.get("conditions"), rfc3339(datetime.now(UTC)))
        return {**status, "meetingId": meeting, "startedAt": started,
                "recorderPod": pod["metadata"]["name"]}

    async def pod_started_at(self, s: SessionView) -> str | None:
        """The session clock's origin the recorder pod was made with (its
        `VOICETRACK_SESSION_STARTED_AT_MS`), when this session's pod exists but the status
        patch that should have recorded `startedAt` was lost (the operator died between
        the two): the clock is chosen once, never again."""
        pod = await self.ctx.kube.get_pod(s.ref.namespace, recorder_pod_name(s.ref.name))
        if pod is None or controller_uid(pod) != s.ref.uid:
            return None
        for container in (pod.get("spec") or {}).get("containers") or []:
            for env in container.get("env") or []:
                if env.get("name") == "VOICETRACK_SESSION_STARTED_AT_MS" and env.get("value"):
                    return rfc3339(datetime.fromtimestamp(int(env["value"]) / 1000, UTC))
        return None

    def _refused(self, s: SessionView, why: str, reason: str = "GuildBusy"
                 ) -> dict[str, Any]:
        obs = Observation(generation=s.generation, paused=s.spec.paused, recorder_phase=None,
                          refused=why, refused_reason=reason)
        return build_status(obs, s.status.get("conditions"), rfc3339(datetime.now(UTC)))

    # ------------------------------------------------------------------ observe

    async def observe_session(self, s: SessionView, seen: Observed | None = None
                              ) -> dict[str, Any]:
        """The status patch (only what changed) from the recorder pod and the chunks. A
        recorder pod that is gone while the session records is made again; a session
        whose recorder ended by itself (Stopped) is deleted, which promotes it
        (`services.autostop`; the patch then has `autoStop`).

        With `seen` (the watches' view: the timer) no API read is made, a session the
        create handler has not started yet is left to it, and the live Jobs are run
        (`services.live`) within the session's write budget: one status patch (progress,
        `status.live` riding on it) or live Job create per chunk period, a new state or
        condition at once (issue 16: with the chunk's three writes, ≤ 4 per chunk).
        Without it the pod is read and the chunks and Jobs are listed."""
        if s.state is SessionState.REFUSED or s.deletion:
            forget_grant(s.ref.uid)
            return {}
        if seen is not None and not s.status.get("startedAt"):
            if self._start_unrecorded(s, seen.pod):
                # the create handler made the pod but its status patch was lost: kopf
                # stores the handler's success (annotations) before the status patch, so an
                # operator killed between the two never runs it again (issue 11, scenario
                # 1). Finish it here: the same fields, the clock from the pod.
                log.warning("session %s/%s: recorder pod without startedAt (the start's "
                            "status patch was lost): recording it from the pod",
                            s.ref.namespace, s.ref.name)
                return await self.ensure_session(s)
            # the create handler has not started it yet (kopf runs timers beside it): it
            # writes the meeting row and the pod; observing now would rebuild that row
            # from the creation time and flag the session out of sync (issue 16, at scale)
            return {}
        if seen is None:
            pod = await self.ctx.kube.get_pod(s.ref.namespace, recorder_pod_name(s.ref.name))
        else:
            pod = seen.pod
        foreign = None
        try:
            with contextlib.suppress(TemporaryFailure):  # before the chunks' rows; resync
                await self.repair_meeting(s, throttle=seen is not None)  # reports an outage
        except MeetingIdInUse as err:  # never recorded into: the session fails instead
            foreign = f"{err}; this session cannot record into meeting {s.meeting_id}"
        failure = s.status.get("recorderFailure") or foreign \
            or recorder_failure(pod, datetime.now(UTC))
        if not failure and seen is not None:
            rival = await guild_rival(self.ctx, s)
            if rival:  # both started in the index's lag: the younger one leaves the guild
                failure = (f"guild {s.spec.guild_id} is already recorded by the older "
                           f"session {rival}: a bot can be in one voice channel per guild")
        if failure:
            # it cannot record: stop the crash loop (and leave the voice channel); the
            # session stays Failed until deleted, which promotes what it recorded
            if pod is not None and not pod["metadata"].get("deletionTimestamp"):
                log.warning("session %s/%s failed: %s", s.ref.namespace, s.ref.name, failure)
                await self.ctx.kube.delete_pod(s.ref.namespace, pod["metadata"]["name"])
        elif pod is not None and (pod.get("status") or {}).get("phase") == "Failed" \
                and not pod["metadata"].get("deletionTimestamp"):
            # evicted or past its deadline: a new pod continues at the next chunk index
            await self.ctx.kube.delete_pod(s.ref.namespace, pod["metadata"]["name"], 0)
        elif pod is None and s.status.get("startedAt"):
            started_ms = int(parse_time(s.status["startedAt"]).timestamp() * 1000)
            await ensure_recorder_access(self.ctx, s.ref, s.spec, s.meeting_id,
                                         parse_time(s.status["startedAt"]))
            await self.ctx.kube.ensure(build_recorder_pod(
                s.ref, s.spec, s.meeting_id, started_ms, self.ctx.settings.pods))
        if not failure and s.status.get("startedAt") and (
                (pod or {}).get("status") or {}).get("phase") != "Succeeded":
            # the grant is kept valid while a recorder may still upload; not once it is done
            await renew_upload_grant(self.ctx, s.ref, s.spec, s.meeting_id,
                                     parse_time(s.status["startedAt"]))
        phase = None if failure else ((pod or {}).get("status") or {}).get("phase")
        if seen is None:
            objs = await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name, s.ref.uid)
            if await self.chunks.ensure_new(objs) + await self.chunks.catch_up(
                    s.ref.namespace, s.ref.name, s.ref.uid, objs):
                objs = await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name, s.ref.uid)
        else:
            objs = sorted((o for o in seen.chunks if controller_uid(o) == s.ref.uid),
                          key=lambda o: int(o["spec"]["index"]))
            await self.catch_up_seen(s, objs, seen.jobs)
        chunks = [ChunkView.from_object(o) for o in objs]
        db_ok, message = await self.resync(s, objs)
        obs = Observation(generation=s.generation, paused=s.spec.paused, recorder_phase=phase,
                          chunks=chunks, recorder_failure=failure or None,
                          recorder_end=None if failure else recorder_end(pod, s.spec),
                          database_synced=db_ok, database_message=message)
        new = build_status(obs, s.status.get("conditions"), rfc3339(datetime.now(UTC)))
        await note_degraded_consent(self.ctx, s, new)  # into the meeting history
        changed = status_changed(s.status, new)
        significant = bool(changed) and \
            _significant(s.status) != _significant({**s.status, **changed})
        slot = seen is not None and self._slot_free(s)
        launched_at = self.ctx.live_launched.get(s.ref.uid)
        live = LiveTick() if seen is None else await LiveService(self.ctx).tick(
            s, objs, seen.live, slot=slot, report=slot or significant,
            since_launch=None if launched_at is None else time.monotonic() - launched_at)
        if live.launched:  # the interval counts from here (not the Job, gone at its TTL)
            self.ctx.live_launched[s.ref.uid] = time.monotonic()
        auto = await delete_stopped(self.ctx, s, pod) \
            if stopped_by_itself(s, new["state"], pod) else {}  # with the state, at once
        if seen is not None and not auto:
            # the write budget (issue 16): one status patch (progress, and status.live
            # riding on it) or live Job create per chunk period; a new state goes at once
            if live.launched and not significant:  # the period's write: the Job's create
                self.ctx.progress_patched[s.ref.uid] = time.monotonic()
                return live.patch
            if not slot and not significant:
                return live.patch  # a withdrawal (consent) or an overdue report: at once
            if changed or live.patch or live.launched:
                self.ctx.progress_patched[s.ref.uid] = time.monotonic()
        return {**changed, **live.patch, **auto}

    def _slot_free(self, s: SessionView) -> bool:
        """True when the observe timer may spend `s`'s budgeted write now: none in the
        last chunk period (`ctx.progress_patched`)."""
        last = self.ctx.progress_patched.get(s.ref.uid)
        return last is None or time.monotonic() - last >= s.spec.chunk_seconds

    @staticmethod
    def _start_unrecorded(s: SessionView, pod: dict[str, Any] | None) -> bool:
        """True when `s` has this session's recorder pod, made more than
        `SAFETY_NET_AGE_S` ago, but no `startedAt`: its start's status patch was lost (a
        younger pod is the create handler's, whose patch may be on its way)."""
        if pod is None or controller_uid(pod) != s.ref.uid:
            return False
        created = pod["metadata"].get("creationTimestamp")
        if not isinstance(created, str):
            return False
        age = datetime.now(UTC) - parse_time(created)
        return age.total_seconds() > SAFETY_NET_AGE_S

    async def catch_up_seen(self, s: SessionView, objs: list[dict[str, Any]],
                            jobs: list[dict[str, Any]]) -> int:
        """The observe timer's safety net on the watches' view (`ChunkService.ensure_new`
        and `catch_up` without their list calls): ensure each chunk older than
        `SAFETY_NET_AGE_S` that has no status yet or whose Job is gone, observe each Job
        ahead of its chunk. Returns how many chunks it acted on."""
        now = datetime.now(UTC)
        by_index: dict[int, dict[str, Any]] = {}
        for j in jobs:
            if controller_uid(j) == s.ref.uid:
                with contextlib.suppress(KeyError, ValueError):
                    by_index[int(j["metadata"]["labels"][LABEL_CHUNK_INDEX])] = j
        n = 0
        pending = [o for o in objs  # most of a long session's chunks: not parsed every tick
                   if (o.get("status") or {}).get("transcodeStatus") not in TERMINAL]
        for chunk in await usable_chunks(self.ctx, pending):  # the unparsable refused
            job = by_index.get(chunk.spec.index)
            if job is not None and job_state(job)[0].rank > chunk.transcode_status.rank:
                await self.chunks.observe_job(job)
                n += 1
                continue
            old = chunk.created is None or (now - chunk.created).total_seconds() \
                > SAFETY_NET_AGE_S
            if old and (not chunk.ensured or (
                    job is None and chunk.spec.tracks
                    and not chunk.transcode_status.terminal)):
                await self.chunks.ensure_chunk(chunk)
                n += 1
        return n

    async def repair_meeting(self, s: SessionView, *, throttle: bool = False) -> bool:
        """Make the session's meeting row again when SQL lost it (PostgreSQL down when the
        session started, a wiped SQLite file), from the session's spec and status, and mark
        the session for a replay of its chunk states (`resync`). True when it had to.
        With `throttle`, the row is looked at most every `MEETING_CHECK_S` seconds per
        session (a lost row also shows as a failed chunk mirror, which resyncs).
        Raises TemporaryFailure while the database is away, and MeetingIdInUse when the
        row belongs to another session (`meetings.session_uid`): a session whose
        spec.meetingId was edited to another's before it recorded one in its status (the
        deletion then stops at PromotionFailed instead of ending or promoting that
        meeting)."""
        if throttle:
            last = self.ctx.meeting_checked.get(s.meeting_id)
            if last is not None and time.monotonic() - last < MEETING_CHECK_S:
                return False
        try:
            check_owner(await self.ctx.db.get_meeting(s.meeting_id), s.ref.uid)
            self.ctx.meeting_checked[s.meeting_id] = time.monotonic()
            return False
        except NotFoundError:
            self.ctx.meeting_checked.pop(s.meeting_id, None)
        await self.ctx.db.create_meeting(
            s.meeting_id, s.spec.guild_id, s.spec.channel_id,
            parse_time(s.status.get("startedAt") or s.created), s.ref.uid,
            namespace=s.ref.namespace, session_name=s.ref.name)
        log.warning("session %s/%s: meeting row %s was missing: rebuilt from the cluster",
                    s.ref.namespace, s.ref.name, s.meeting_id)
        self.ctx.unsynced[(s.ref.namespace, s.ref.name)] = "meeting row rebuilt"
        return True

    async def resync(self, s: SessionView,
                     objs: list[dict[str, Any]] | None = None) -> tuple[bool, str]:
        """Replay the session's meeting row and chunk states into SQL when a write failed
        earlier (or the condition says so); with the session's chunk objects `objs`, audit
        the mirror once per session and turn (`chunkmirror.audit_mirror`). Returns
        (synced, message)."""
        key = (s.ref.namespace, s.ref.name)
        lagging = key in self.ctx.unsynced or any(
            c["type"] == "DatabaseSynced" and c["status"] == "False"
            for c in s.status.get("conditions") or [])
        if not lagging and objs is not None and s.ref.uid not in self.ctx.audited:
            if await audit_mirror(self.ctx, objs, s.meeting_id):
                self.ctx.audited.add(s.ref.uid)
            lagging = key in self.ctx.unsynced
        if not lagging:
            return True, ""
        self.ctx.unsynced.pop(key, None)
        try:
            await self.ctx.db.create_meeting(
                s.meeting_id, s.spec.guild_id, s.spec.channel_id,
                parse_time(s.status.get("startedAt") or s.created), s.ref.uid,
            namespace=s.ref.namespace, session_name=s.ref.name)
        except TemporaryFailure as err:
            self.ctx.unsynced[key] = str(err)
            return False, f"database unavailable: {err}"
        except MeetingIdInUse as err:  # observe fails the session: never written over
            self.ctx.unsynced[key] = str(err)
            return False, str(err)
        if await resync_chunks(self.ctx, s.ref.namespace, s.ref.name, s.ref.uid,
                               s.meeting_id):
            self.ctx.audited.add(s.ref.uid)  # every chunk's state was written: as audited
            log.info("session %s/%s: SQL mirror caught up", *key)
            return True, "chunk states replayed"
        return False, f"database unavailable: {self.ctx.unsynced.get(key, '')}"
