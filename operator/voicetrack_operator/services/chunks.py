"""Chunks: one transcoder Job each, state mirrored into the chunk's status and SQL.

Level-based and forward-only: `ensure_chunk` (on create and on resume) makes the rows and
the Job; `observe_job` (on every Job event) moves the chunk queued → in_progress →
done | failed, never back. SQL is written after the Kubernetes status, and a failed SQL
write only marks the session's DatabaseSynced condition false: the SQL mirror
(`services.chunkmirror`) replays every chunk's status into SQL later (the rows are
idempotent upserts).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from voicetrack.chunkspec import ChunkStatus
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import TranscodeResult
from voicetrack.names import chunk_name, controller_uid, session_meeting_id, transcode_job_name
from voicetrack.resources import (
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    SessionSpec,
    TranscodeStatus,
)
from voicetrack_operator.adapters.objects import AsyncObjectStore
from voicetrack_operator.builders import SessionRef
from voicetrack_operator.context import Context
from voicetrack_operator.jobs import build_transcode_job
from voicetrack_operator.services.admission import namespace_refusal
from voicetrack_operator.services.chunkmirror import mirror
from voicetrack_operator.services.chunkresult import (
    PREVIOUS_RESULT,
    previous_layout_result,
    read_result,
)
from voicetrack_operator.services.chunkstate import (
    IN_PROGRESS_AFTER_S,
    ChunkRef,
    job_state,
    parsed,
    ran_for,
)
from voicetrack_operator.services.failures import (
    failed_transiently,
    failure_detail,
    retry_or_give_up,
)
from voicetrack_operator.services.isolation import (
    SessionFacts,
    chunk_refusal,
    refusal_message,
)
from voicetrack_operator.services.sessionview import parse_time
from voicetrack_operator.services.unparsable import usable_chunks

log = logging.getLogger(__name__)


def session_facts(session: dict[str, Any], spec: SessionSpec) -> SessionFacts:
    """The facts a chunk is checked against, from a RecordingSession object and its
    parsed spec."""
    meta = session["metadata"]
    uid = meta["uid"]
    return SessionFacts(
        ref=SessionRef(name=meta["name"], namespace=meta["namespace"], uid=uid),
        layout=MeetingLayout(spec.storage.prefix, spec.guild_id, session_meeting_id(session)),
        raw_format=spec.storage.raw_format,
        created=parse_time(str(meta["creationTimestamp"])))


class ChunkService:
    """Decides what happens to chunks; handlers call one method each."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def _session(self, namespace: str, name: str, uid: str | None = None
                       ) -> tuple[dict[str, Any], SessionSpec]:
        """The chunk's session `namespace/name` and its parsed spec: from the session index
        when it shows that session (with uid `uid`, the chunk's owner, when given: a
        namesake made again may not be in the index yet), else read from the API. Raises
        NotFoundError when it is gone."""
        known = self.ctx.sessions.get(namespace, name) if self.ctx.sessions is not None \
            else None
        if known is not None and (uid is None or known["metadata"].get("uid") == uid):
            return known, SessionSpec.model_validate(known.get("spec") or {})
        obj = await self.ctx.kube.get_session(namespace, name)
        if obj is None:
            raise NotFoundError(f"RecordingSession {namespace}/{name} is gone")
        return obj, SessionSpec.model_validate(obj["spec"])

    async def refusal(self, chunk: ChunkRef, session: dict[str, Any], spec: SessionSpec
                      ) -> str | None:
        """Why `chunk` is not a chunk of `session` (`isolation.chunk_refusal`, its raw
        tracks looked up in S3 with one listing of its folder), None when it is. Raises
        TemporaryFailure while S3 is away. A session that never started in a bucket the
        operator does not allow (`admission.bucket_refusal`) or in a namespace without
        NetworkPolicies (`admission.namespace_refusal`: its transcoder Job would run
        unconfined) has no chunks there."""
        started = bool((session.get("status") or {}).get("startedAt"))
        if not started and (why := namespace_refusal(
                self.ctx.settings, str(session["metadata"]["namespace"]))):
            return f"its session's {why}"
        if spec.storage.bucket not in self.ctx.settings.allowed_buckets and not started:
            return f"its session's spec.storage.bucket {spec.storage.bucket!r} is not allowed"
        facts = session_facts(session, spec)
        present = None
        if chunk.spec.tracks:
            present = set(await self.ctx.store(spec.storage.bucket).list_keys(
                facts.layout.chunk_dir(chunk.spec.index) + "/"))
        return chunk_refusal(chunk.claim, facts, datetime.now(UTC), present)

    async def refuse(self, chunk: ChunkRef, why: str) -> ChunkStatus:
        """Mark `chunk` refused: status `failed` with `refused` and `error` saying why (the
        printer column Error), conditionally on the resourceVersion read. No row, no Job,
        no manifest, nothing deleted. Returns the status written (or found)."""
        message = refusal_message(chunk.name, why)
        log.warning("%s/%s: %s", chunk.namespace, chunk.name, message)
        status = ChunkStatus(transcode_status=TranscodeStatus.FAILED,
                             track_count=len(chunk.spec.tracks), error=message[:1000],
                             refused=why[:1000])
        if await self.ctx.kube.patch_chunk_status(chunk.namespace, chunk.name,
                                                  status.to_api(), chunk.resource_version):
            chunk.status, chunk.ensured = status, True
            self.ctx.metrics.chunks.labels("failed").inc()
        return chunk.status

    async def ensure_chunk(self, chunk: ChunkRef) -> ChunkStatus:
        """Check the chunk against its session (`refusal`): a refused chunk gets only its
        status (`refuse`). Otherwise status `queued` and rows `queued` for each track, then
        the transcoder Job (a chunk without tracks is done at once, no Job). Returns the
        chunk's status.

        Idempotent: the status is written only if the chunk has none (conditionally on
        the resourceVersion read), the rows are upserts, the Job create meets a 409."""
        if chunk.transcode_status.terminal:
            return chunk.status
        session, spec = await self._session(chunk.namespace, chunk.spec.session_name,
                                            chunk.owner_uid)
        why = await self.refusal(chunk, session, spec)
        if why is not None:
            return await self.refuse(chunk, why)
        owner = SessionRef(name=session["metadata"]["name"], namespace=chunk.namespace,
                           uid=session["metadata"]["uid"])
        job: dict[str, Any] | None = None
        if not chunk.spec.tracks:
            status = ChunkStatus(transcode_status=TranscodeStatus.DONE, track_count=0)
        else:
            job = build_transcode_job(owner, chunk.spec, spec, self.ctx.settings.pods)
            status = ChunkStatus(transcode_status=TranscodeStatus.QUEUED,
                                 track_count=len(chunk.spec.tracks),
                                 job_name=job["metadata"]["name"])
        # The status is written before the Job exists, so the Job's events cannot race it.
        resumed = chunk.ensured
        if not chunk.ensured:
            # its spec next to its raw tracks first: the RecordingChunk is not the only
            # index of the raw audio (a chunk deleted by hand is rebuilt from it); and its
            # frozen copy outside the recorder's grant, which later Jobs place their
            # pieces by (`voicetrack_transcoder.context`): a chunk nobody spoke in has no
            # Job to freeze it, and the recorder may rewrite `chunk.json` at any time
            layout = MeetingLayout(spec.storage.prefix, spec.guild_id,
                                   session_meeting_id(session))
            store = self.ctx.store(spec.storage.bucket)
            for key in (layout.chunk_manifest_key(chunk.spec.index),
                        layout.frozen_spec_key(chunk.spec.index)):
                await store.put_json(key, chunk.spec.to_api())
            if not await self.ctx.kube.patch_chunk_status(
                    chunk.namespace, chunk.name, status.to_api(), chunk.resource_version):
                return chunk.status  # handled meanwhile by the other path (event or timer)
            chunk.status, chunk.ensured = status, True
            if job is None:
                self.ctx.metrics.chunks.labels("done").inc()
        if job is not None and resumed and await self._done_from_result(chunk, job):
            return chunk.status
        await mirror(self.ctx, chunk)
        if job is not None:
            await self.ctx.kube.ensure(job)
        return chunk.status

    async def _done_from_result(self, chunk: ChunkRef, job: dict[str, Any]) -> bool:
        """For a chunk already `queued`/`in_progress` (a resume, or the timer's safety net):
        when its `result.json` is in S3 and usable, its Job ran to the end (the transcoder
        writes it last) and may have been collected by its TTL while the operator was away:
        mark the chunk done from it instead of transcoding again. True when it did (or
        another path moved the chunk meanwhile); False when there is no usable result and
        the Job is to be ensured."""
        try:
            result = await self._result(chunk)
        except InvalidInputError:
            return False  # none yet, or unusable: the Job (re)writes it
        log.info("chunk %s/%s done from its result.json (its Job is gone or finished)",
                 chunk.namespace, chunk.name)
        await self._advance(chunk, chunk.status.model_copy(update={
            "transcode_status": TranscodeStatus.DONE, "tracks": list(result.outputs),
            "job_name": job["metadata"]["name"]}))
        return True

    async def observe_job(self, job: dict[str, Any],
                          known: dict[str, Any] | None = None) -> None:
        """Move the job's chunk forward to what the Job shows; read `result.json` when it
        completed, the failure reason when it failed. Never moves a chunk back.

        `in_progress` is written only once the Job has run `IN_PROGRESS_AFTER_S` (a quick
        transcode goes queued → done in one write; the observe timer writes it for a slow
        one). `known`: the chunk as a watch last showed it; when it is already as far as
        the Job, nothing is read."""
        labels = job["metadata"].get("labels") or {}
        session, index = labels.get(LABEL_SESSION), labels.get(LABEL_CHUNK_INDEX)
        if not session or index is None:
            return
        ns, job_name = job["metadata"]["namespace"], job["metadata"]["name"]
        state, reason = job_state(job)
        if state is TranscodeStatus.IN_PROGRESS and not ran_for(job, IN_PROGRESS_AFTER_S):
            return
        if known is not None and state.rank <= ChunkStatus.model_validate(
                known.get("status") or {}).transcode_status.rank:
            return
        obj = await self.ctx.kube.get_chunk(ns, chunk_name(session, int(index)))
        chunk = parsed(obj) if obj is not None else None
        if obj is None or chunk is None:  # gone, or refused (`services.unparsable`)
            return
        if controller_uid(job) != chunk.session_uid:
            return  # an earlier namesake session's Job, not yet collected: not this chunk's
        if state.rank <= chunk.transcode_status.rank:
            return
        given_up: str | None = None
        if state is TranscodeStatus.FAILED and failed_transiently(job):
            # not failed on its input (exit 2), the raw audio intact: the Job is deleted and
            # the safety net (`SessionService.catch_up_seen`, `catch_up` while deleting)
            # makes it again, up to a limit of such failures (`failures.retry_or_give_up`)
            retry = await retry_or_give_up(self.ctx.kube, obj, job, str(reason))
            if retry.retried:
                log.warning("chunk %s/%s: Job %s failed (%s); making it again", ns,
                            chunk.name, job_name, reason)
                self.ctx.metrics.transcode_retries.inc()
            if retry.give_up is None:
                return
            given_up = retry.give_up
        new = chunk.status.model_copy(update={"transcode_status": state, "job_name": job_name})
        if state is TranscodeStatus.DONE:
            try:
                result = await self._result(chunk)
            except InvalidInputError as err:
                if given_up is None and await self._previous_layout_result(chunk):
                    # an older transcoder's Job (an upgrade while it ran, or an older
                    # image): its outputs are where the recorder's grant reaches, so they
                    # are not taken; the chunk is transcoded again, up to the Job limit
                    retry = await retry_or_give_up(
                        self.ctx.kube, obj, job, "its result.json is at the previous "
                        f"layout's key ({PREVIOUS_RESULT}): an older transcoder image")
                    if retry.give_up is None:
                        log.warning("chunk %s/%s: Job %s wrote the previous layout; "
                                    "transcoding again", ns, chunk.name, job_name)
                        return
                    given_up = retry.give_up
                state, reason = TranscodeStatus.FAILED, f"result.json unusable: {err}"
                new = new.model_copy(update={"transcode_status": state})
            else:
                new = new.model_copy(update={"tracks": list(result.outputs)})
        if state is TranscodeStatus.FAILED:
            if given_up is None:
                detail = await failure_detail(self.ctx.kube, ns, job_name)
                given_up = f"{reason}{'; ' + detail if detail else ''}"
            new = new.model_copy(update={"error": given_up[:1000]})
        await self._advance(chunk, new)

    async def _advance(self, chunk: ChunkRef, new: ChunkStatus) -> None:
        """Write `new` as the chunk's status, conditionally on the resourceVersion it was
        read at (another path that moved it meanwhile wins: nothing more is done), count a
        terminal state (and a done chunk's created → done latency), mirror it to SQL."""
        if not await self.ctx.kube.patch_chunk_status(chunk.namespace, chunk.name,
                                                      new.to_api(), chunk.resource_version):
            return
        chunk.status = new
        state = new.transcode_status
        if state.terminal:
            self.ctx.metrics.chunks.labels(state.value).inc()
            if state is TranscodeStatus.DONE and chunk.created is not None:
                self.ctx.metrics.chunk_latency.observe(
                    (datetime.now(UTC) - chunk.created).total_seconds())
        await mirror(self.ctx, chunk)

    async def _place(self, chunk: ChunkRef) -> tuple[AsyncObjectStore, MeetingLayout]:
        """The store and key layout of the chunk's session's meeting."""
        spec = chunk.spec
        _, sspec = await self._session(chunk.namespace, spec.session_name, chunk.owner_uid)
        return (self.ctx.store(sspec.storage.bucket),
                MeetingLayout(sspec.storage.prefix, spec.guild_id, spec.meeting_id))

    async def _previous_layout_result(self, chunk: ChunkRef) -> bool:
        """`chunkresult.previous_layout_result` for the chunk."""
        return await previous_layout_result(*await self._place(chunk), chunk.spec)

    async def _result(self, chunk: ChunkRef) -> TranscodeResult:
        """`chunkresult.read_result` for the chunk."""
        return await read_result(*await self._place(chunk), chunk.spec)

    async def ensure_new(self, chunk_objs: list[dict[str, Any]]) -> int:
        """`ensure_chunk` for every chunk that has no transcode status yet (its event was
        missed or failed). Returns how many."""
        n = 0
        for chunk in await usable_chunks(self.ctx, chunk_objs):  # the unparsable refused
            if not chunk.ensured:
                await self.ensure_chunk(chunk)
                n += 1
        return n

    async def catch_up(self, namespace: str, session: str, uid: str,
                       chunk_objs: list[dict[str, Any]]) -> int:
        """Observe again each transcoder Job that is ahead of its chunk (an event that
        failed, or was missed while the operator was down). Two list calls, then one
        observe per lagging chunk. Returns how many were observed."""
        chunks = [c for c in map(parsed, chunk_objs) if c is not None]
        seen = {c.spec.index: c.transcode_status for c in chunks}
        n = 0
        with_job: set[int] = set()
        for job in await self.ctx.kube.list_jobs(namespace, session, uid):
            labels = job["metadata"].get("labels") or {}
            if labels.get(LABEL_COMPONENT) != "transcoder" or LABEL_CHUNK_INDEX not in labels:
                continue
            index = int(labels[LABEL_CHUNK_INDEX])
            with_job.add(index)
            state, _ = job_state(job)
            current = seen.get(index)
            if current is not None and state.rank > current.rank:
                await self.observe_job(job)
                n += 1
        for chunk in chunks:  # pending, but its Job is gone (TTL passed while we were
            # away): done from its result, else again
            if not chunk.transcode_status.terminal and chunk.spec.tracks \
                    and chunk.spec.index not in with_job:
                await self.ensure_chunk(chunk)
                n += 1
        return n

    async def fail_pending(self, namespace: str, session: str, uid: str, reason: str,
                           chunk_objs: list[dict[str, Any]] | None = None) -> int:
        """Mark every chunk of session `uid` still queued or in progress failed with
        `reason` (transcode timeout at deletion), after deleting its transcoder Job so no
        output lands once the chunk folders are collected. The patch holds the
        resourceVersion the chunk was read at: a `done` that lands meanwhile stands (the
        next pass sees it). `chunk_objs` is the view to act on (default: listed now).
        Returns how many were marked failed."""
        if chunk_objs is None:
            chunk_objs = await self.ctx.kube.list_chunks(namespace, session, uid)
        n = 0
        for chunk in map(parsed, chunk_objs):
            if chunk is None or chunk.transcode_status.terminal:
                continue  # refused when it does not parse (`ensure_new`): terminal
            job_name = transcode_job_name(session, chunk.spec.index)
            await self.ctx.kube.delete_job(namespace, job_name)
            new = chunk.status.model_copy(update={
                "transcode_status": TranscodeStatus.FAILED, "error": reason,
                "job_name": job_name})
            if not await self.ctx.kube.patch_chunk_status(namespace, chunk.name, new.to_api(),
                                                          chunk.resource_version):
                log.info("chunk %s/%s changed while timing out: left as it is", namespace,
                         chunk.name)
                continue
            chunk.status = new
            await mirror(self.ctx, chunk)
            self.ctx.metrics.chunks.labels("failed").inc()
            n += 1
        return n
