"""Deleting a session: stop the recorder, wait for the transcodes, promote, record in SQL,
collect what ownership cannot (S3 objects, temp rows). Then the finalizer goes and the
garbage collector deletes the owned children (Jobs, RecordingChunks) with the session.

Explicit steps, each recording its progress in `status.deletion` (`DeletionProgress`; it
and the other types of a deletion's progress are `services.deletionstate`), so a retry
resumes at the step where it stopped. Every step is idempotent, so losing the progress only
repeats work. `finalize_session` returns a typed `DeletionOutcome` instead of raising:
the handler patches its status and retries after `retry_in` seconds until it is done.
Deletion never ends without promotion: an input error (a failed promotion Job, outputs
that do not match, a manifest the API refuses) keeps the finalizer and the raw data and is
retried (`PromotionFailed`). A promotion Job that failed on one chunk's raw input (its
termination message names the chunk) is not such an error: that chunk is left out, once,
and the rest promoted at once (`services.leftout`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.names import controller_uid, recorder_pod_name
from voicetrack.resources import SessionState
from voicetrack_operator.context import Context
from voicetrack_operator.plan import build_promotion_plan, overlapping, rejected_consent
from voicetrack_operator.services.admission import NO_NETWORK_POLICY
from voicetrack_operator.services.chunks import ChunkService
from voicetrack_operator.services.chunkstate import parsed
from voicetrack_operator.services.consent import record_degraded_consent
from voicetrack_operator.services.deletionstate import (
    STEP_STATE,
    DeletionOutcome,
    DeletionProgress,
    DeletionStep,
    Wait,
)
from voicetrack_operator.services.failures import (
    meeting_outcome,
    spoken_chunks,
)
from voicetrack_operator.services.grants import (
    forget_grant,
    recorder_may_upload,
    renew_upload_grant,
    revoke_upload_grant,
)
from voicetrack_operator.services.inventory import chunk_inventory, collect_chunks
from voicetrack_operator.services.leftout import (
    NOTICE_REASON,
    leave_out,
    left_out_reason,
    may_leave_out,
)
from voicetrack_operator.services.live import LiveService
from voicetrack_operator.services.promotion import (
    ChunkInputFailed,
    final_manifest,
    run_promotion,
)
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import SessionView, parse_time, rfc3339
from voicetrack_operator.services.stuck import stuck_reason
from voicetrack_operator.services.webhooks import WebhookService
from voicetrack_operator.status import CONSENT_DEGRADED, Observation, build_status

log = logging.getLogger(__name__)

PROMOTION_RETRY_S = 300.0
"""A deletion that cannot complete (promotion failed, outputs do not match, an input the
API refuses) is tried again this often (seconds); deleting a failed promotion Job makes the
next try run it anew."""


class DeletionService:
    """Runs the deletion steps of one session; `finalize_session` is the entry point."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.chunks = ChunkService(ctx)
        self.sessions = SessionService(ctx)
        self.notices: list[tuple[str, str]] = []
        """(reason, message) of the Events the current attempt asks for."""

    async def finalize(self, body: dict[str, Any]) -> DeletionOutcome:
        """Parse the session and run `finalize_session`; a spec that does not parse is a
        PromotionFailed like any other input error (never a released finalizer)."""
        try:
            s = SessionView.parse(body)
        except InvalidInputError as err:
            progress = DeletionProgress.from_status(dict(body.get("status") or {}))
            return self._outcome(progress, SessionState.PROMOTION_FAILED, str(err),
                                 PROMOTION_RETRY_S, failed=True)
        return await self.finalize_session(s)

    async def finalize_session(self, s: SessionView) -> DeletionOutcome:
        """Run the steps from `status.deletion.step` on until one waits or fails, or all
        are done. Infrastructure failures retry after their delay in the same state. The
        outcome's `notices` are the Events this attempt asks for."""
        self.notices = []
        out = await self._run_steps(s)
        out.notices.extend(self.notices)
        return out

    async def _run_steps(self, s: SessionView) -> DeletionOutcome:
        progress = DeletionProgress.from_status(s.status)
        if s.state is SessionState.REFUSED and progress.step is DeletionStep.STOP \
                and not await self.refused_recorded(s):
            # it never recorded: nothing to promote
            self.ctx.forget_session(s.ref.uid, s.meeting_id)
            return DeletionOutcome(progress, SessionState.REFUSED, "refused session deleted")
        try:
            repaired = False
            while progress.step is not DeletionStep.DONE:
                if progress.step is not DeletionStep.STOP and not repaired:
                    # SQL may have lost the row; stopping needs no SQL, so a database
                    # outage never keeps the recorder recording (second review)
                    await self.sessions.repair_meeting(s)
                    repaired = True
                result = await self.run_step(s, progress)
                if isinstance(result, Wait):
                    return self._outcome(progress, result.state, result.message, result.delay)
                progress = result
        except InvalidInputError as err:
            self.ctx.metrics.promotions.labels("failed").inc()
            return self._outcome(progress, SessionState.PROMOTION_FAILED, str(err),
                                 PROMOTION_RETRY_S, failed=True)
        except TemporaryFailure as err:
            return self._outcome(progress, STEP_STATE[progress.step], str(err), err.delay)
        ids = progress.recording_ids or []
        log.info("session %s/%s promoted: %d recording(s)", s.ref.namespace, s.ref.name,
                 len(ids))
        obs = Observation(generation=s.generation, paused=False, recorder_phase=None,
                          promoted=True)
        status = build_status(obs, s.status.get("conditions"), rfc3339(datetime.now(UTC)))
        # what the chunks said while recording stays said (there are no chunks to read now)
        kept = [c for c in s.status.get("conditions") or [] if c.get("type") == CONSENT_DEGRADED]
        out = self._outcome(progress, SessionState.PROMOTED, "promoted", None)
        out.status.update({"recordingIds": ids, "conditions": status["conditions"] + kept})
        self.ctx.forget_session(s.ref.uid, s.meeting_id)  # done: nothing left to watch
        return out

    async def refused_recorded(self, s: SessionView) -> bool:
        """Whether Refused session `s` recorded anyway: a start whose status patch was lost
        made its recorder pod, and a later start found its guild busy (the index's lag)
        and refused it. Then its recorder pod or chunks exist, and its deletion runs every
        step as a Failed session's does (its audio promoted, its recorder stopped), except
        when the refusal says its meeting id is another session's (`MeetingIdInUse`), its
        bucket is not one the operator may use (`BucketNotAllowed`): its promotion would
        write into, and its collection delete from, what is not its own; or its namespace
        has no NetworkPolicies (`NoNetworkPolicy`): its transcoder and promotion Jobs
        would run there unconfined. It is then released and its raw chunks stay in S3
        (logged)."""
        ns, name, uid = s.ref.namespace, s.ref.name, s.ref.uid
        pod = await self.ctx.kube.get_pod(ns, recorder_pod_name(name))
        recorded = (pod is not None and controller_uid(pod) == uid) \
            or bool(await self.ctx.kube.list_chunks(ns, name, uid))
        if recorded and any(c.get("type") == "Ready" and c.get("reason") in (
                "MeetingIdInUse", "BucketNotAllowed", NO_NETWORK_POLICY)
                for c in s.status.get("conditions") or []):
            log.warning("session %s/%s refused (its meeting id or bucket is not its own, or "
                        "its namespace has no NetworkPolicies) but it recorded: released "
                        "unpromoted, its raw chunks left in S3", ns, name)
            if pod is not None and controller_uid(pod) == uid:
                await self.ctx.kube.delete_pod(ns, recorder_pod_name(name))
            return False
        return recorded

    @staticmethod
    def _outcome(progress: DeletionProgress, state: SessionState, message: str,
                 retry_in: float | None, failed: bool = False) -> DeletionOutcome:
        return DeletionOutcome(progress, state, message, retry_in, failed, status={
            "state": state.value, "phaseMessage": message, "deletion": progress.to_api()})

    async def run_step(self, s: SessionView, p: DeletionProgress) -> DeletionProgress | Wait:
        """One step: the progress after it, or what it waits for."""
        match p.step:
            case DeletionStep.STOP:
                return await self.stop_recorder(s, p)
            case DeletionStep.TRANSCODES:
                return await self.wait_transcodes(s, p)
            case DeletionStep.PROMOTE:
                return await self.promote(s, p)
            case DeletionStep.RECORD:
                return await self.record(s, p)
            case DeletionStep.COLLECT:
                await self.collect(s, p)
                return replace(p, step=DeletionStep.DONE)
        raise AssertionError(f"no step {p.step}")

    async def stop_recorder(self, s: SessionView, p: DeletionProgress
                            ) -> DeletionProgress | Wait:
        """Delete the recorder pod (it flushes its open chunk on SIGTERM); wait until it is
        gone. Until it has finished, its upload grant is kept valid (`renew_upload_grant`):
        it flushes for up to its grace period after SIGTERM."""
        name = recorder_pod_name(s.ref.name)
        pod = await self.ctx.kube.get_pod(s.ref.namespace, name)
        if pod is not None and await self.stuck_recorder(s, pod) is not None:
            pod = None  # force-deleted: its kubelet will never confirm a graceful deletion
        if pod is None:
            forget_grant(s.ref.uid)
            await LiveService(self.ctx).stop(s)  # promotion never waits for the audio so far
            return replace(p, step=DeletionStep.TRANSCODES)
        if not pod["metadata"].get("deletionTimestamp"):
            await self.ctx.kube.delete_pod(s.ref.namespace, name)
        if s.status.get("startedAt") and recorder_may_upload(pod):
            await renew_upload_grant(self.ctx, s.ref, s.spec, s.meeting_id,
                                     parse_time(s.status["startedAt"]))
        return Wait("waiting for the recorder to flush its last chunk", SessionState.STOPPING,
                    delay=1)

    async def stuck_recorder(self, s: SessionView, pod: dict[str, Any]) -> str | None:
        """When the recorder `pod` will never finish by itself (`stuck.stuck_reason`: its
        node gone or NotReady, or past its grace period by `STUCK_AFTER_S`): revoke the
        session's upload grant, force-delete the pod (grace 0), add a `RecorderForceDeleted`
        notice, and return why. None (nothing done) otherwise."""
        node_name = (pod.get("spec") or {}).get("nodeName")
        node = await self.ctx.kube.get_node(node_name) if node_name else None
        why = stuck_reason(pod, node, datetime.now(UTC))
        if why is None:
            return None
        revoked = await revoke_upload_grant(self.ctx, s.ref, s.spec, s.meeting_id)
        await self.ctx.kube.delete_pod(s.ref.namespace, pod["metadata"]["name"], grace_s=0)
        message = (f"recorder pod {pod['metadata']['name']} force-deleted: {why}; upload "
                   f"grant {'revoked' if revoked else 'not revoked (see the log)'}; a chunk "
                   "it had not flushed is lost")
        log.warning("session %s/%s: %s", s.ref.namespace, s.ref.name, message)
        self.notices.append(("RecorderForceDeleted", message))
        return why

    async def wait_transcodes(self, s: SessionView, p: DeletionProgress
                              ) -> DeletionProgress | Wait:
        """Wait until every chunk is done or failed; after `transcodeTimeoutSeconds` since
        deletion the pending ones are marked failed."""
        ns, name, uid = s.ref.namespace, s.ref.name, s.ref.uid
        objs = await self.ctx.kube.list_chunks(ns, name, uid)
        if await self.chunks.ensure_new(objs):  # chunks whose event was missed
            objs = await self.ctx.kube.list_chunks(ns, name, uid)
        pending = [c for c in map(parsed, objs)  # the unparsable: refused by ensure_new
                   if c is not None and not c.transcode_status.terminal]
        if pending:
            await self.chunks.catch_up(ns, name, uid, objs)
            since = parse_time(s.deletion) if s.deletion else datetime.now(UTC)
            if (datetime.now(UTC) - since).total_seconds() < s.spec.transcode_timeout_seconds:
                return Wait(f"waiting for {len(pending)} transcode(s)",
                            SessionState.TRANSCODING)
            limit = s.spec.transcode_timeout_seconds
            marked = await self.chunks.fail_pending(ns, name, uid,
                                                    f"transcode not finished within {limit} s")
            if marked < len(pending):  # one changed meanwhile: look again
                return Wait("transcodes timed out; re-reading the chunks",
                            SessionState.TRANSCODING, delay=1)
        return replace(p, step=DeletionStep.PROMOTE)

    async def promote(self, s: SessionView, p: DeletionProgress) -> DeletionProgress | Wait:
        """Plan the promotion from the chunk inventory, run its Job and verify its outputs
        (`promotion.run_promotion`). Chunks whose windows overlap an earlier one's are left
        out with a `ChunksOverlap` notice (`plan.overlapping`). A Job failed on the raw
        input of a chunk this plan promotes: that chunk is left out and failed, with a
        `ChunkLeftOut` notice, and the step runs again at once (`services.leftout`).
        Raises PromotionFailed when the Job failed on other input or its outputs do not
        match."""
        if await self.ctx.db.get_recordings_for_meeting(s.meeting_id):
            return replace(p, step=DeletionStep.RECORD, promoted=True)  # progress was lost
        inv = await chunk_inventory(self.ctx, s, p.left_out)
        chunks = inv.for_plan()
        plan = build_promotion_plan(s.spec, s.meeting_id, chunks, inv.held)
        if plan is None:
            return replace(p, step=DeletionStep.RECORD, promoted=False)
        try:
            waiting = await run_promotion(self.ctx, s, plan)
        except ChunkInputFailed as err:
            if not may_leave_out(err.index, plan, p.left_out):
                raise  # not a chunk this plan promotes: leaving it out cannot help
            reason = left_out_reason(err.index, err.detail)
            self.notices.append((NOTICE_REASON,
                                 await leave_out(self.ctx, s, err.index, reason, err.job)))
            return replace(p, left_out={**p.left_out, err.index: reason})
        if waiting is not None:
            return Wait(waiting[0], SessionState.PROMOTING, delay=waiting[1])
        if left_out := overlapping(chunks):  # said once, when the promotion is done
            message = ("left out of the promotion, their windows overlapping an earlier "
                       "chunk's (a recorder fault): chunk(s) " + ", ".join(
                           f"{c.index} [{c.start_ms}, {c.end_ms}) ms" for c in left_out))
            log.warning("session %s/%s: %s", s.ref.namespace, s.ref.name, message)
            self.notices.append(("ChunksOverlap", message))
        if rejected := rejected_consent(s.spec, (c for c, _ in chunks), inv.held):
            log.warning("session %s/%s: %s", s.ref.namespace, s.ref.name, rejected)
            self.notices.append(("ConsentClaimRejected", rejected))  # said once, too
        return replace(p, step=DeletionStep.RECORD, promoted=True)

    async def record(self, s: SessionView, p: DeletionProgress) -> DeletionProgress:
        """The `recordings` rows (once) and the meeting's end."""
        existing = await self.ctx.db.get_recordings_for_meeting(s.meeting_id)
        # the chunks as they are now, read once: for the audit below, and for the outcome
        # (status.chunks stopped at the deletion's start, and chunks failed by the
        # transcode timeout since: a meeting whose every spoken chunk failed is `failed`,
        # never `cancelled` as if nothing was recorded)
        objs = await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name, s.ref.uid)
        if existing:
            ids = [r.id for r in existing]
        elif not p.promoted:
            ids = []
        elif not (manifest := await final_manifest(self.ctx, s)).tracks:
            ids = []  # chunks, but nobody spoke (or everyone opted out): nothing to keep
        else:
            # rows missed while SQL was away, or left behind by a replica killed between
            # a chunk's status patch and its row write (audited afresh: no observe timer
            # runs on a session being deleted)
            self.ctx.audited.discard(s.ref.uid)
            ok, message = await self.sessions.resync(s, objs)
            if not ok:
                raise TemporaryFailure(message, delay=5)
            # the verified final manifest is the record, also when no temp row is done:
            # chunks rebuilt from S3 (their objects deleted before any was mirrored done,
            # e.g. --cascade=foreground on a young session) have none; before, that
            # failed the promotion for good and held the finalizer
            # the temp rows stay (cleaned = 1) until the collect step deletes them (unless
            # retained): its inventory judges chunks rebuilt from S3 by their failed rows
            # (`rebuilt.rebuilt_status`); deleted here, a chunk whose transcode had failed
            # came back done, in no plan and not failed, its folder left in S3 for good
            ids = await self.ctx.db.promote_temp_recordings_to_persistent(
                s.meeting_id, s.spec.output.tracks, manifest.tracks,
                keep_temp_rows=True, session_uid=s.ref.uid, require_done_rows=False)
        failed, done = spoken_chunks(objs)  # done but promoted to nothing: opted out
        outcome = meeting_outcome(s.status, ids, (failed, done if p.promoted else 0))
        with contextlib.suppress(NotFoundError):
            await record_degraded_consent(self.ctx, s, objs)  # opt-outs not enforced: why
            await self.ctx.db.end_meeting(s.meeting_id, datetime.now(UTC), *outcome,
                                          session_uid=s.ref.uid)
        await WebhookService(self.ctx).enqueue_ended(s, outcome[0], ids)  # issue 13
        self.ctx.metrics.promotions.labels("done" if ids else "empty").inc()
        return replace(p, step=DeletionStep.COLLECT, recording_ids=ids)

    async def collect(self, s: SessionView, p: DeletionProgress) -> int:
        """What ownership cannot collect: the chunk folders in S3 that were promoted or
        kept as failed (`inventory.collect_chunks`; the chunks `p` left out are failed),
        the promotion plan, and (unless
        retained) the temp rows. Jobs and RecordingChunks are owned by the session and go
        with it, and the live "audio so far" (`live/`), superseded by the final tracks.
        Returns the number of objects deleted from S3."""
        deleted = await collect_chunks(self.ctx, s, p.left_out)
        deleted += await self.ctx.store(s.spec.storage.bucket).delete_prefix(
            s.layout.live_root)
        rows = await self.ctx.db.get_temp_recordings_for_meeting(s.meeting_id)
        if rows:
            if s.spec.retain_temp_rows:
                await self.ctx.db.mark_temp_recording_cleaned([r.id for r in rows])
            else:
                await self.ctx.db.delete_temp_recordings(s.meeting_id, session_uid=s.ref.uid)
        return deleted
