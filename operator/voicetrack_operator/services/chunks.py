"""Chunks: one transcoder Job each, state mirrored into the chunk's status and SQL.

Level-based and forward-only: `ensure_chunk` (on create and on resume) makes the rows and
the Job; `observe_job` (on every Job event) moves the chunk queued → in_progress →
done | failed, never back. SQL is written after the Kubernetes status, and a failed SQL
write only marks the session's DatabaseSynced condition false: `resync_chunks` replays
every chunk's status into SQL later (the rows are idempotent upserts).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import TranscodeResult
from voicetrack.resources import (
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    TRANSCODE_ORDER,
    ChunkSpec,
    SessionSpec,
    chunk_name,
    transcode_job_name,
)
from voicetrack_operator.builders import SessionRef, build_transcode_job
from voicetrack_operator.context import Context

log = logging.getLogger(__name__)


@dataclass
class ChunkRef:
    """A RecordingChunk by namespace and name, with its parsed spec and status."""

    namespace: str
    name: str
    spec: ChunkSpec
    status: dict[str, Any]
    session_uid: str
    created: datetime | None = None
    resource_version: str | None = None

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> ChunkRef:
        """Parse a RecordingChunk. Raises InvalidInputError naming the bad field."""
        meta = obj["metadata"]
        try:
            spec = ChunkSpec.model_validate(obj.get("spec", {}))
        except ValueError as err:
            raise InvalidInputError(f"RecordingChunk {meta['name']}: invalid spec: {err}"
                                    ) from err
        owners = [o["uid"] for o in meta.get("ownerReferences", [])
                  if o.get("kind") == "RecordingSession"]
        created = meta.get("creationTimestamp")
        return cls(namespace=meta["namespace"], name=meta["name"], spec=spec,
                   status=dict(obj.get("status") or {}),
                   session_uid=owners[0] if owners else meta.get("uid", ""),
                   resource_version=meta.get("resourceVersion"),
                   created=datetime.fromisoformat(created.replace("Z", "+00:00"))
                   if isinstance(created, str) else created)

    @property
    def transcode_status(self) -> str:
        return str(self.status.get("transcodeStatus", "queued"))


def job_state(job: dict[str, Any]) -> tuple[str, str | None]:
    """(transcode status, failure reason) of a transcoder Job from its status."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "done", None
        if cond.get("type") == "Failed":
            return "failed", f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}"
    if (status.get("active") or 0) > 0 or (status.get("ready") or 0) > 0 \
            or (status.get("failed") or 0) > 0:
        return "in_progress", None
    return "queued", None


class ChunkService:
    """Decides what happens to chunks; handlers call one method each."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def _session(self, namespace: str, name: str) -> tuple[dict[str, Any], SessionSpec]:
        obj = await self.ctx.kube.get_session(namespace, name)
        if obj is None:
            raise NotFoundError(f"RecordingSession {namespace}/{name} is gone")
        return obj, SessionSpec.model_validate(obj["spec"])

    async def ensure_chunk(self, chunk: ChunkRef) -> dict[str, Any]:
        """Status `queued` and rows `queued` for each track, then the transcoder Job (a
        chunk without tracks is done at once, no Job). Returns the chunk's status."""
        if chunk.transcode_status in ("done", "failed"):
            return chunk.status
        session, spec = await self._session(chunk.namespace, chunk.spec.session_name)
        owner = SessionRef(name=session["metadata"]["name"], namespace=chunk.namespace,
                           uid=session["metadata"]["uid"])
        if not chunk.spec.tracks:
            status: dict[str, Any] = {"transcodeStatus": "done", "trackCount": 0,
                                      "tracks": []}
            self.ctx.metrics.chunks.labels("done").inc()
        else:
            job = build_transcode_job(owner, chunk.spec, spec, self.ctx.settings.pods)
            status = {"transcodeStatus": "queued", "trackCount": len(chunk.spec.tracks),
                      "jobName": job["metadata"]["name"]}
        # The status is written before the Job exists, so the Job's events cannot race it.
        if "transcodeStatus" not in chunk.status and not await self.ctx.kube.patch_chunk_status(
                chunk.namespace, chunk.name, status, chunk.resource_version):
            return chunk.status  # handled meanwhile by the other path (event or timer)
        chunk.status.update(status)
        await self.mirror(chunk, status["transcodeStatus"])
        if chunk.spec.tracks:
            await self.ctx.kube.ensure(job)
        return status

    async def observe_job(self, job: dict[str, Any]) -> None:
        """Move the job's chunk forward to what the Job shows; read `result.json` when it
        completed, the failure reason when it failed."""
        labels = job["metadata"].get("labels") or {}
        session, index = labels.get(LABEL_SESSION), labels.get(LABEL_CHUNK_INDEX)
        if not session or index is None:
            return
        ns = job["metadata"]["namespace"]
        state, reason = job_state(job)
        obj = await self.ctx.kube.get_chunk(ns, chunk_name(session, int(index)))
        if obj is None:
            return
        chunk = ChunkRef.from_object(obj)
        if TRANSCODE_ORDER[state] <= TRANSCODE_ORDER[chunk.transcode_status]:
            return
        status: dict[str, Any] = {"transcodeStatus": state,
                                  "jobName": job["metadata"]["name"]}
        if state == "done":
            try:
                result = await self._result(chunk)
            except InvalidInputError as err:
                state, reason = "failed", f"result.json unusable: {err}"
                status["transcodeStatus"] = state
            else:
                status["tracks"] = [o.to_api() for o in result.outputs]
        if state == "failed":
            detail = await self.failure_detail(ns, job["metadata"]["name"])
            status["error"] = f"{reason}{'; ' + detail if detail else ''}"[:1000]
        if not await self.ctx.kube.patch_chunk_status(ns, chunk.name, status,
                                                      chunk.resource_version):
            return  # another path moved this chunk since we read it: it wins
        chunk.status.update(status)
        if state in ("done", "failed"):
            self.ctx.metrics.chunks.labels(state).inc()
            if state == "done" and chunk.created is not None:
                self.ctx.metrics.chunk_latency.observe(
                    (datetime.now(UTC) - chunk.created).total_seconds())
        await self.mirror(chunk, state)

    async def _result(self, chunk: ChunkRef) -> TranscodeResult:
        spec = chunk.spec
        _, sspec = await self._session(chunk.namespace, spec.session_name)
        layout = MeetingLayout(sspec.storage.prefix, spec.guild_id, spec.meeting_id)
        store = self.ctx.store(sspec.storage.bucket)
        try:
            raw = await asyncio.to_thread(store.get_json, layout.result_key(spec.index))
            result = TranscodeResult.model_validate(raw)
        except NotFoundError as err:
            raise InvalidInputError(f"no result.json for chunk {spec.index}") from err
        except (InvalidInputError, ValueError) as err:  # not JSON, or not a TranscodeResult
            raise InvalidInputError(str(err)) from err
        users = {o.user_id for o in result.outputs}
        missing = [t.user_id for t in spec.tracks if t.user_id not in users]
        if missing:
            raise InvalidInputError(f"result.json lacks tracks of {', '.join(missing)}")
        return result

    async def failure_detail(self, ns: str, job_name: str) -> str:
        """The transcoder's own one-line reason (`error: …` in its log), if readable."""
        for pod in await self.ctx.kube.job_pods(ns, job_name):
            text = await self.ctx.kube.pod_log_tail(ns, pod["metadata"]["name"], 10)
            lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
            if lines:
                return lines[-1]
        return ""

    async def mirror(self, chunk: ChunkRef, state: str) -> bool:
        """Write the chunk's state into `temp_recordings` (one row per track). Returns
        False (and counts it) when the database is unavailable; the resync catches up."""
        primary: dict[str, dict[str, Any]] = {}  # per user: the mp3, else the first output
        for out in chunk.status.get("tracks", []):
            if out.get("format") == "mp3" or out["userId"] not in primary:
                primary[out["userId"]] = out
        try:
            for track in chunk.spec.tracks:
                out = primary.get(track.user_id, {})
                await self.ctx.db.upsert_chunk_status(
                    chunk.session_uid, chunk.spec.index, track.user_id, chunk.spec.meeting_id,
                    chunk.spec.guild_id, track.key, chunk.spec.raw_format, state,
                    job_name=chunk.status.get("jobName"), mp3_path=out.get("key"),
                    sha256=out.get("sha256"), duration_ms=out.get("durationMs"),
                    error=chunk.status.get("error"))
        except TemporaryFailure as err:
            self.ctx.metrics.db_errors.inc()
            self.ctx.unsynced[(chunk.namespace, chunk.spec.session_name)] = str(err)
            log.warning("SQL mirror of %s deferred: %s", chunk.name, err)
            return False
        return True

    async def resync_chunks(self, namespace: str, session: str) -> bool:
        """Replay every chunk's status into SQL (idempotent). True when all writes landed."""
        ok = True
        for obj in await self.ctx.kube.list_chunks(namespace, session):
            chunk = ChunkRef.from_object(obj)
            ok = await self.mirror(chunk, chunk.transcode_status) and ok
        return ok

    async def ensure_new(self, chunk_objs: list[dict[str, Any]]) -> int:
        """`ensure_chunk` for every chunk that has no transcode status yet (its event was
        missed or failed). Returns how many."""
        n = 0
        for obj in chunk_objs:
            if "transcodeStatus" not in (obj.get("status") or {}):
                await self.ensure_chunk(ChunkRef.from_object(obj))
                n += 1
        return n

    async def catch_up(self, namespace: str, session: str,
                       chunk_objs: list[dict[str, Any]]) -> int:
        """Observe again each transcoder Job that is ahead of its chunk (an event that
        failed, or was missed while the operator was down). Two list calls, then one
        observe per lagging chunk. Returns how many were observed."""
        seen = {int(o["spec"]["index"]): ChunkRef.from_object(o).transcode_status
                for o in chunk_objs}
        n = 0
        with_job: set[int] = set()
        for job in await self.ctx.kube.list_jobs(namespace, session):
            labels = job["metadata"].get("labels") or {}
            if labels.get(LABEL_COMPONENT) != "transcoder" or LABEL_CHUNK_INDEX not in labels:
                continue
            index = int(labels[LABEL_CHUNK_INDEX])
            with_job.add(index)
            state, _ = job_state(job)
            current = seen.get(index)
            if current is not None and TRANSCODE_ORDER[state] > TRANSCODE_ORDER[current]:
                await self.observe_job(job)
                n += 1
        for obj in chunk_objs:  # pending, but its Job is gone (TTL passed while we were
            chunk = ChunkRef.from_object(obj)  # away): make it again, transcodes repeat
            if chunk.transcode_status in ("queued", "in_progress") and chunk.spec.tracks \
                    and chunk.spec.index not in with_job:
                await self.ensure_chunk(chunk)
                n += 1
        return n

    async def fail_pending(self, namespace: str, session: str, reason: str) -> int:
        """Mark every chunk still queued or in progress failed with `reason` (transcode
        timeout at deletion). Returns how many."""
        n = 0
        for obj in await self.ctx.kube.list_chunks(namespace, session):
            chunk = ChunkRef.from_object(obj)
            if chunk.transcode_status in ("done", "failed"):
                continue
            status = {"transcodeStatus": "failed", "error": reason,
                      "jobName": transcode_job_name(session, chunk.spec.index)}
            await self.ctx.kube.patch_chunk_status(namespace, chunk.name, status)
            chunk.status.update(status)
            await self.mirror(chunk, "failed")
            self.ctx.metrics.chunks.labels("failed").inc()
            n += 1
        return n
