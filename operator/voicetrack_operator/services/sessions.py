"""Sessions: start the recorder, keep the status current, and on deletion stop, wait for
the transcodes, promote, record in SQL and garbage-collect.

Every method is level-based: it reads what exists, does what is missing, and returns; the
handlers call it again (kopf's TemporaryError) until it reports done. Calling any of them
twice has the effect of calling it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack.objectstore import ObjectStore
from voicetrack.resources import ChunkSpec, SessionSpec, promote_job_name, recorder_pod_name
from voicetrack_operator.builders import (
    SessionRef,
    build_promote_job,
    build_recorder_pod,
    build_recorder_rbac,
)
from voicetrack_operator.context import Context
from voicetrack_operator.plan import build_promotion_plan
from voicetrack_operator.services.chunks import ChunkRef, ChunkService, job_state
from voicetrack_operator.status import ChunkView, Observation, build_status, status_changed

log = logging.getLogger(__name__)


class Waiting(TemporaryFailure):
    """A step is under way; come back in `delay` seconds (not an error). `state` is the
    session state to show meanwhile (Stopping, Transcoding, Promoting)."""

    def __init__(self, message: str, delay: float = 2.0, state: str = "Stopping") -> None:
        super().__init__(message, delay)
        self.state = state


class PromotionFailed(InvalidInputError):
    """Promotion did not complete: the raw chunks are kept and the finalizer stays. The
    handler tries again every few minutes; deleting the failed promotion Job re-runs it."""


@dataclass
class SessionView:
    """A RecordingSession as the services need it."""

    ref: SessionRef
    spec: SessionSpec
    status: dict[str, Any]
    generation: int
    created: str
    deletion: str | None = None
    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> SessionView:
        """Parse a RecordingSession. Raises InvalidInputError naming the bad field."""
        meta = body["metadata"]
        try:
            spec = SessionSpec.model_validate(body.get("spec", {}))
        except ValueError as err:
            raise InvalidInputError(f"invalid spec: {err}") from err
        return cls(ref=SessionRef(name=meta["name"], namespace=meta["namespace"],
                                  uid=meta["uid"]),
                   spec=spec, status=dict(body.get("status") or {}),
                   generation=int(meta.get("generation", 1)),
                   created=str(meta.get("creationTimestamp", "")),
                   deletion=meta.get("deletionTimestamp"), body=body)

    @property
    def meeting_id(self) -> str:
        """spec.meetingId, else one derived from the uid (stable across retries)."""
        if self.spec.meeting_id:
            return self.spec.meeting_id
        return self.status.get("meetingId") or derive_meeting_id(self.ref.uid)

    @property
    def layout(self) -> MeetingLayout:
        return MeetingLayout(self.spec.storage.prefix, self.spec.guild_id, self.meeting_id)


def derive_meeting_id(uid: str) -> str:
    """A 16-character meeting id from the session uid (hex of its sha256)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class SessionService:
    """Decides what happens to sessions; handlers call one method each."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.chunks = ChunkService(ctx)

    # ------------------------------------------------------------------ start

    async def busy_guild(self, s: SessionView) -> str | None:
        """The name of an older active session for the same guild, if any. Ties on
        creation time go to the smaller name, so two racing sessions agree who won."""
        for other in await self.ctx.kube.list_sessions():
            meta = other["metadata"]
            if meta["uid"] == s.ref.uid:
                continue
            if (other.get("spec") or {}).get("guildId") != s.spec.guild_id:
                continue
            if meta.get("deletionTimestamp") and await self.ctx.kube.get_pod(
                    meta["namespace"], recorder_pod_name(meta["name"])) is None:
                continue  # being promoted, its recorder has left the channel
            if (other.get("status") or {}).get("state") in ("Refused", "Stopped", "Failed"):
                continue
            key = (str(meta.get("creationTimestamp", "")), meta["name"])
            if key < (s.created, s.ref.name):
                return f"{meta['namespace']}/{meta['name']}"
        return None

    async def ensure_session(self, s: SessionView) -> dict[str, Any]:
        """Start (or, after an operator restart, keep) the session: refuse a busy guild,
        write the meeting row, make the recorder's RBAC and Pod. Returns status fields."""
        if s.status.get("state") == "Refused":
            return {}
        if s.status.get("startedAt") and s.status.get("recorderPod"):
            return await self.observe_session(s)  # an operator restart: keep, don't reset
        busy = await self.busy_guild(s)
        if busy:
            return self._refused(s, busy)
        started = s.status.get("startedAt") or rfc3339(datetime.now(UTC))
        started_dt = _parse_time(started)
        meeting = s.meeting_id
        try:
            await self.ctx.db.create_meeting(meeting, s.spec.guild_id, s.spec.channel_id,
                                             started_dt)
            db_ok = True
        except TemporaryFailure as err:
            log.warning("meeting row for %s deferred: %s", s.ref.name, err)
            self.ctx.unsynced[(s.ref.namespace, s.ref.name)] = str(err)
            db_ok = False
        for manifest in build_recorder_rbac(s.ref.namespace):
            await self.ctx.kube.ensure(manifest)
        started_ms = int(started_dt.timestamp() * 1000)
        pod = build_recorder_pod(s.ref, s.spec, meeting, started_ms, self.ctx.settings.pods)
        await self.ctx.kube.ensure(pod)
        obs = Observation(generation=s.generation, paused=s.spec.paused,
                          recorder_phase="Pending", database_synced=db_ok,
                          database_message="" if db_ok else "meeting row pending")
        status = build_status(obs, s.status.get("conditions"), rfc3339(datetime.now(UTC)))
        return {**status, "meetingId": meeting, "startedAt": started,
                "recorderPod": pod["metadata"]["name"]}

    def _refused(self, s: SessionView, busy: str) -> dict[str, Any]:
        reason = (f"guild {s.spec.guild_id} is already recorded by session {busy}: a bot "
                  "can be in one voice channel per guild")
        obs = Observation(generation=s.generation, paused=s.spec.paused, recorder_phase=None,
                          refused=reason)
        return build_status(obs, s.status.get("conditions"), rfc3339(datetime.now(UTC)))

    # ------------------------------------------------------------------ observe

    async def observe_session(self, s: SessionView) -> dict[str, Any]:
        """The status patch (only what changed) from the recorder pod and the chunks. A
        recorder pod that is gone while the session records is made again."""
        if s.status.get("state") == "Refused" or s.deletion:
            return {}
        pod = await self.ctx.kube.get_pod(s.ref.namespace, recorder_pod_name(s.ref.name))
        if pod is not None and (pod.get("status") or {}).get("phase") == "Failed" \
                and not pod["metadata"].get("deletionTimestamp"):
            # evicted or past its deadline: a new pod continues at the next chunk index
            await self.ctx.kube.delete_pod(s.ref.namespace, pod["metadata"]["name"], 0)
        elif pod is None and s.status.get("startedAt"):
            started_ms = int(_parse_time(s.status["startedAt"]).timestamp() * 1000)
            await self.ctx.kube.ensure(build_recorder_pod(
                s.ref, s.spec, s.meeting_id, started_ms, self.ctx.settings.pods))
        phase = ((pod or {}).get("status") or {}).get("phase")
        objs = await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name)
        if await self.chunks.ensure_new(objs) + await self.chunks.catch_up(
                s.ref.namespace, s.ref.name, objs):
            objs = await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name)
        chunks = [ChunkView.from_object(o) for o in objs]
        db_ok, message = await self.resync(s)
        obs = Observation(generation=s.generation, paused=s.spec.paused, recorder_phase=phase,
                          chunks=chunks, database_synced=db_ok, database_message=message)
        new = build_status(obs, s.status.get("conditions"), rfc3339(datetime.now(UTC)))
        return status_changed(s.status, new)

    async def resync(self, s: SessionView) -> tuple[bool, str]:
        """Replay the session's meeting row and chunk states into SQL when a write failed
        earlier (or the condition says so). Returns (synced, message)."""
        key = (s.ref.namespace, s.ref.name)
        lagging = key in self.ctx.unsynced or any(
            c["type"] == "DatabaseSynced" and c["status"] == "False"
            for c in s.status.get("conditions") or [])
        if not lagging:
            return True, ""
        self.ctx.unsynced.pop(key, None)
        try:
            await self.ctx.db.create_meeting(
                s.meeting_id, s.spec.guild_id, s.spec.channel_id,
                _parse_time(s.status.get("startedAt") or s.created))
        except TemporaryFailure as err:
            self.ctx.unsynced[key] = str(err)
            return False, f"database unavailable: {err}"
        if await self.chunks.resync_chunks(s.ref.namespace, s.ref.name):
            log.info("session %s/%s: SQL mirror caught up", *key)
            return True, "chunk states replayed"
        return False, f"database unavailable: {self.ctx.unsynced.get(key, '')}"

    # ------------------------------------------------------------------ finalize

    async def stop_recorder(self, s: SessionView) -> None:
        """Delete the recorder pod (it flushes its open chunk on SIGTERM) and wait until it
        is gone. Raises Waiting while it flushes."""
        name = recorder_pod_name(s.ref.name)
        pod = await self.ctx.kube.get_pod(s.ref.namespace, name)
        if pod is None:
            return
        if not pod["metadata"].get("deletionTimestamp"):
            await self.ctx.kube.delete_pod(s.ref.namespace, name)
        raise Waiting("waiting for the recorder to flush its last chunk", delay=1)

    async def wait_transcodes(self, s: SessionView) -> list[tuple[ChunkSpec, str]]:
        """Every chunk with its final transcode status. Raises Waiting while some are
        pending and `transcodeTimeoutSeconds` since deletion has not passed; after it, the
        pending ones are marked failed."""
        objs = await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name)
        chunks = [ChunkRef.from_object(o) for o in objs]
        if await self.chunks.ensure_new(objs):  # chunks whose event was missed
            return await self.wait_transcodes(s)
        pending = [c for c in chunks if c.transcode_status not in ("done", "failed")]
        if pending:
            await self.chunks.catch_up(s.ref.namespace, s.ref.name, objs)
            since = _parse_time(s.deletion) if s.deletion else datetime.now(UTC)
            waited = (datetime.now(UTC) - since).total_seconds()
            if waited < s.spec.transcode_timeout_seconds:
                raise Waiting(f"waiting for {len(pending)} transcode(s)", delay=2,
                          state="Transcoding")
            await self.chunks.fail_pending(
                s.ref.namespace, s.ref.name,
                f"transcode not finished within {s.spec.transcode_timeout_seconds} s")
            return await self.wait_transcodes(s)
        return [(c.spec, c.transcode_status) for c in chunks]

    async def promote(self, s: SessionView, chunks: list[tuple[ChunkSpec, str]]
                      ) -> FinalManifest | None:
        """Run the promotion Job and return its verified manifest (None when there is
        nothing to promote). Raises Waiting while it runs, PromotionFailed when it failed
        or its outputs do not match the manifest."""
        try:
            plan = build_promotion_plan(s.spec, s.meeting_id, chunks)
        except ValueError as err:
            raise PromotionFailed(f"chunks cannot be promoted: {err}; raw chunks kept"
                                  ) from err
        if plan is None:
            return None
        store = self.ctx.store(s.spec.storage.bucket)
        layout = s.layout
        job_name = promote_job_name(s.ref.name)
        job = await self.ctx.kube.get_job(s.ref.namespace, job_name)
        if job is None:
            await asyncio.to_thread(store.put_json, layout.promotion_plan_key, plan.to_api())
            await self.ctx.kube.ensure(build_promote_job(
                s.ref, layout.promotion_plan_key, s.spec, self.ctx.settings.pods))
            raise Waiting("promotion started", delay=2, state="Promoting")
        state, reason = job_state(job)
        if state == "failed":
            detail = await self.chunks.failure_detail(s.ref.namespace, job_name)
            self.ctx.metrics.promotions.labels("failed").inc()
            raise PromotionFailed(f"promotion Job {job_name} failed: {reason}"
                                  f"{'; ' + detail if detail else ''}; raw chunks kept; "
                                  f"delete Job {job_name} to run it again")
        if state != "done":
            raise Waiting("promotion running", delay=2, state="Promoting")
        try:
            manifest = FinalManifest.model_validate(
                await asyncio.to_thread(store.get_json, layout.final_manifest_key))
        except (InvalidInputError, ValueError) as err:  # missing, not JSON, or not a manifest
            raise PromotionFailed(f"final manifest unusable: {err}; raw chunks kept") from err
        await asyncio.to_thread(verify_outputs, store, manifest)
        return manifest

    async def record(self, s: SessionView, manifest: FinalManifest | None) -> list[str]:
        """The `recordings` rows (once) and the meeting's end. Returns the recording ids."""
        existing = await self.ctx.db.get_recordings_for_meeting(s.meeting_id)
        if existing:
            ids = [r.id for r in existing]
        elif manifest is None:
            ids = []
        else:
            ok, message = await self.resync(s)  # rows missed while SQL was away, first
            if not ok:
                raise TemporaryFailure(message, delay=5)
            ids = await self.ctx.db.promote_temp_recordings_to_persistent(
                s.meeting_id, s.spec.output.tracks, manifest.tracks,
                keep_temp_rows=s.spec.retain_temp_rows)
            if not ids:
                raise PromotionFailed("final tracks exist but no temp row is done in SQL, so "
                                      "no recordings row was written; raw chunks kept")
        with contextlib.suppress(NotFoundError):
            await self.ctx.db.end_meeting(s.meeting_id, datetime.now(UTC),
                                          "completed" if ids else "cancelled")
        self.ctx.metrics.promotions.labels("done" if ids else "empty").inc()
        return ids

    async def keep_failed(self, s: SessionView) -> int:
        """Copy the raw tracks of failed chunks to `final/failed/…` and list them, with
        their reasons, in `final/failed-chunks.json`, so collecting the chunk objects
        loses nothing. Returns the number of tracks kept."""
        failed = []
        for obj in await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name):
            chunk = ChunkRef.from_object(obj)
            if chunk.transcode_status == "failed":
                failed.append(chunk)
        if not failed:
            return 0
        store = self.ctx.store(s.spec.storage.bucket)
        layout = s.layout
        entries = []
        for chunk in failed:
            for track in chunk.spec.tracks:
                kept = layout.failed_raw_key(chunk.spec.index, track.user_id,
                                             chunk.spec.raw_format)
                if not await asyncio.to_thread(store.exists, kept):  # a retry keeps it
                    try:
                        await asyncio.to_thread(store.copy, track.key, kept)
                    except NotFoundError:
                        kept = ""  # the recorder never uploaded it: say so
                entries.append({"index": chunk.spec.index, "startMs": chunk.spec.start_ms,
                                "endMs": chunk.spec.end_ms, "userId": track.user_id,
                                "key": kept, "sha256": track.sha256, "bytes": track.bytes,
                                "rawFormat": chunk.spec.raw_format,
                                "error": chunk.status.get("error", "")})
        await asyncio.to_thread(store.put_json, layout.failed_manifest_key,
                                {"meetingId": s.meeting_id, "failed": entries})
        return len(entries)

    async def collect_garbage(self, s: SessionView) -> int:
        """Delete the chunk objects (failed chunks' raw kept first), the promotion plan,
        Jobs, RecordingChunks and (unless retained) temp rows. Returns the number of
        objects deleted from S3."""
        store = self.ctx.store(s.spec.storage.bucket)
        layout = s.layout
        await self.keep_failed(s)
        deleted = await asyncio.to_thread(store.delete_prefix, layout.chunks_root)
        await asyncio.to_thread(store.delete_keys, [layout.promotion_plan_key])
        rows = await self.ctx.db.get_temp_recordings_for_meeting(s.meeting_id)
        if rows:
            if s.spec.retain_temp_rows:
                await self.ctx.db.mark_temp_recording_cleaned([r.id for r in rows])
            else:
                await self.ctx.db.delete_temp_recordings(s.meeting_id)
        for job in await self.ctx.kube.list_jobs(s.ref.namespace, s.ref.name):
            await self.ctx.kube.delete_job(s.ref.namespace, job["metadata"]["name"])
        for chunk in await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name):
            await self.ctx.kube.delete_chunk(s.ref.namespace, chunk["metadata"]["name"])
        return deleted

    async def finalize_session(self, s: SessionView) -> dict[str, Any]:
        """All of deletion, step by step; raises Waiting until done. Returns the status
        fields to record (recordingIds) once everything is promoted and collected."""
        if s.status.get("state") == "Refused":
            return {}
        await self.stop_recorder(s)
        recorded = await self.ctx.db.get_recordings_for_meeting(s.meeting_id)
        if recorded:  # a retry after the rows were written: only collection is left
            ids = [r.id for r in recorded]
        else:
            chunks = await self.wait_transcodes(s)
            manifest = await self.promote(s, chunks)
            ids = await self.record(s, manifest)
        deleted = await self.collect_garbage(s)
        log.info("session %s/%s promoted: %d recording(s), %d object(s) collected",
                 s.ref.namespace, s.ref.name, len(ids), deleted)
        obs = Observation(generation=s.generation, paused=False, recorder_phase=None,
                          promoted=True)
        status = build_status(obs, s.status.get("conditions"), rfc3339(datetime.now(UTC)))
        return {"recordingIds": ids, "state": status["state"],
                "conditions": status["conditions"], "phaseMessage": "promoted"}


def verify_outputs(store: ObjectStore, manifest: FinalManifest) -> None:
    """Check every final object's size and sha256 against the manifest (streamed).
    Raises PromotionFailed naming the first mismatch."""
    for track in manifest.tracks:
        try:
            size, digest = store.digest(track.key)
        except NotFoundError as err:
            raise PromotionFailed(f"{track.key} is missing; raw chunks kept") from err
        if size != track.bytes or digest != track.sha256:
            raise PromotionFailed(
                f"{track.key}: {size} bytes sha256 {digest[:12]}… but the manifest says "
                f"{track.bytes} bytes sha256 {track.sha256[:12]}…; raw chunks kept")
