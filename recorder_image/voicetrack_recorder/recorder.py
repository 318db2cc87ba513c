"""The recorder's capture loop: source → chunker → uploader, with pause, limits and stop.

Session time starts at the session's `status.startedAt` (passed in by the operator), so a
restarted recorder keeps the same timeline: it uploads first what its previous run left in
the spool (`ChunkUploader.adopt`) and takes the gaps it left unsaid (`Spool.unsaid`),
continues at the next chunk index and records the interval it missed (after the last chunk
and those gaps) as a gap with cause `recorder-restart`. A pause
or the end of a run (SIGTERM too) ends the open chunk at its slot, sealed by the seal rule
(`sealing`: frames a jitter buffer still holds make it in, none after that slot); on resume
the next chunk carries a `paused` gap, which promotion cuts (kept in the spool from the
pause on until a chunk spooled carries it, `_keep_unsaid`: a restart meanwhile cuts from
where it began, and keeps it a pause after a resume).

Sealed chunks go to the spool on the pod's disk first (bounded:
`voicetrack_recorder.spool`), and the upload task sends them in index order, retrying an S3
or API outage without a count limit while the session lives; in memory only their specs
wait. A chunk the spool cannot take (full, or a disk error) is dropped and its window
becomes the next chunk's `connection-lost` gap (the index is reused, so indices stay
consecutive); a pause next to it keeps its `paused` gap, in a marker chunk of its own
when needed (`gaps`). When the end is forced (SIGTERM: the pod is being deleted; or the
session deleted), what cannot be uploaded within the grace period (re-adopted chunks too)
is given up the same way: one marker chunk without tracks (it needs no S3) carries the lost
window as its `connection-lost` gap, so nothing disappears without a cause. How a run ends
(the flush deadline, the ends that arm it at once, the spool left for a restarted
container) is `ending`.

Consent at stop (issue 12, docs/consent.md): an opt-out that no chunk carried (made while
paused, or seen after the last seal) is written at stop in a consent marker chunk; it and
the lost window's marker are `stopmarkers`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import replace
from typing import Protocol

from voicetrack.audio import FRAME_MS
from voicetrack.chunkspec import Gap
from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.resources import SessionSpec
from voicetrack_recorder.chunker import Chunker, SealedChunk
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.ending import FlushDeadline, RecorderResult, arms_at_once, keeps_spool
from voicetrack_recorder.faults import retry_async
from voicetrack_recorder.gaps import LOST, carry, spans, unsaid, unsaid_now
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.restart import restore_unsaid, said_chunks
from voicetrack_recorder.sealing import MAX_SOURCE_LAG_SLOTS as MAX_SOURCE_LAG_SLOTS
from voicetrack_recorder.sealing import SEAL_DELAY_SLOTS as SEAL_DELAY_SLOTS
from voicetrack_recorder.sealing import TAIL_WAIT_MAX_S, seal_tail, sealable_slot, source_watermark
from voicetrack_recorder.spool import SpooledChunk, SpoolFull
from voicetrack_recorder.stopmarkers import LastWord, give_up, mark_consent
from voicetrack_recorder.uploader import ChunkUploader, Deadline

log = logging.getLogger(__name__)

TICK_S = 0.05
MAX_CLOCK_LEAD_MS = 60_000
"""How far (ms) the session's last chunk may end ahead of the session clock at start (clock
skew between the nodes of two runs) before `resume_point` calls it a fault."""


class Source(Protocol):
    """What captures audio: `run` pushes frames into the recorder until `stop`."""

    async def run(self, stop: asyncio.Event) -> None: ...


class Recorder:
    """Records one session until stopped, its limits are reached, or the session goes."""

    def __init__(self, kube: RecorderKube, uploader: ChunkUploader, spec: SessionSpec,
                 clock: SessionClock) -> None:
        self.kube = kube
        self.uploader = uploader
        self.spec = spec
        self.clock = clock
        self.consent = Consent(clock, spec.opt_out_user_ids, spec.opt_out_role_ids)
        """Who is not recorded (issue 12); the source may set its `roles_of`."""
        self.chunker = Chunker(spec.chunk_seconds * 1000 // FRAME_MS, consent=self.consent)
        self.stop = asyncio.Event()
        self.source_stop = asyncio.Event()
        self._pending: deque[SpooledChunk] = deque()
        """Spooled chunks not yet acknowledged, in index order (specs only: the audio
        is on disk)."""
        self._wake = asyncio.Event()
        self._closed = False
        self._unsaid: list[Gap] = []
        """Contiguous gaps since the last chunk spooled, not yet carried by a chunk: the
        windows dropped (the spool full or failing) and the gaps they carried
        (`gaps.unsaid`); kept in the spool too, for a restart (`_keep_unsaid`)."""
        self._paused_at: int | None = None
        self._last: LastWord | None = None
        """The session's last chunk's end and `optedOut` (`stopmarkers.LastWord`)."""
        self.flush = FlushDeadline(kube)
        """When the uploads of the last chunks stop retrying (`ending.FlushDeadline`)."""

    def push(self, user_id: str, slot: int, packet: bytes, phase: int = 0) -> bool:
        """The FrameSink the source feeds (runs on the event loop thread); refuses every
        frame of a member opted out now (consent; the `files` source's speakers are seen
        here)."""
        if self.consent.see(user_id):
            return False
        return self.chunker.push(user_id, slot, packet, phase)

    def follow_consent(self) -> None:
        """Apply the session's opt-out lists as the watch last saw them and re-evaluate
        every member seen (roles change too); cut the held frames of members opted out
        now at their `sinceMs`. Called every tick of `run`."""
        policy = self.kube.opt_out
        fresh = (self.consent.set_policy(*policy) if policy is not None
                 else self.consent.refresh())
        for user_id in fresh:
            since = self.consent.since_ms(user_id)
            assert since is not None
            self.chunker.cut(user_id, since)

    def resume_point(self, existing_end_ms: int | None, paused: bool) -> None:
        """Open the first window now, after a gap since `existing_end_ms` (session ms, the
        end of the session's last chunk, spooled or in the API, or of the gaps a previous
        run left unsaid after it) if any. An end ahead of the
        clock (clock skew between the nodes of two runs) opens at that end, so windows never
        overlap (a warning past 1 s). An end more than MAX_CLOCK_LEAD_MS ahead is a fault (a
        moved `startedAt`, a node clock far off): InvalidInputError, the recorder exits 2,
        the session shows Failed with the reason, its chunks promoted as they are. Before,
        it opened the window there (every frame dropped as late: an hour of nothing while
        the session showed Recording) or, briefly, now (windows overlapping the last
        chunk's: a promotion refused for ever, second review)."""
        now = max(self.clock.now_slot(), 0)
        lead = (existing_end_ms or 0) - now * FRAME_MS
        if existing_end_ms is not None and lead > MAX_CLOCK_LEAD_MS:
            raise InvalidInputError(
                f"the session's last chunk (or the gaps a previous run left unsaid after it) "
                f"ends at {existing_end_ms} ms, {lead} ms ahead of "
                f"this node's session clock ({now * FRAME_MS} ms; more than "
                f"{MAX_CLOCK_LEAD_MS} ms of clock skew): check the nodes' clocks and the "
                "session's status.startedAt")
        if existing_end_ms is not None and lead > 1000:
            log.warning("the session's last chunk (or unsaid gaps) ends %d ms ahead of this "
                        "node's session clock (clock skew?): continuing at its end", lead)
        if paused:
            self._paused_at = now if existing_end_ms is None else existing_end_ms // FRAME_MS
            return
        gap = None
        if existing_end_ms is not None and now * FRAME_MS > existing_end_ms:
            gap = Gap(start_ms=existing_end_ms, end_ms=now * FRAME_MS, cause="recorder-restart")
        elif existing_end_ms is not None:
            now = existing_end_ms // FRAME_MS
        self.chunker.open(now, gap)

    async def prepare(self) -> int:
        """Continue after the session's chunks and those a previous run left in the spool
        (`ChunkUploader.adopt`: queued first) or stored in S3 only (markers:
        `restart.said_chunks`), and after the gaps that run left unsaid
        (`restart.restore_unsaid`), or start fresh; opens the first window unless paused.
        Returns the capture origin slot: the start of the session's first chunk, or of those gaps
        when there is none (t = 0 of the final recording)."""
        existing = await retry_async(lambda: asyncio.to_thread(self.kube.list_chunks),
                                     "list RecordingChunks", self.stop)
        # with the markers previous runs stored in S3 only (`restart.said_chunks`)
        existing = await asyncio.to_thread(said_chunks, self.uploader.spool, existing)
        self._pending.extend(await asyncio.to_thread(self.uploader.adopt, existing))
        chunks = existing + [s.spec for s in self._pending]
        self._unsaid = await asyncio.to_thread(restore_unsaid, self.uploader.spool,
                                               chunks[-1].end_ms if chunks else None)
        if chunks:
            self.chunker.next_index = chunks[-1].index + 1
            self.consent.restore(chunks[-1].opted_out)
            # who has audio in the chunks so far: listed first when optedOut is full
            self.consent.note_recorded(t.user_id for c in chunks for t in c.tracks)
            self._last = (chunks[-1].end_ms, list(chunks[-1].opted_out))
        end = self._unsaid[-1].end_ms if self._unsaid else chunks[-1].end_ms if chunks else None
        self.resume_point(end, bool(self.kube.paused))
        if chunks:
            return chunks[0].start_ms // FRAME_MS
        if self._unsaid:
            return self._unsaid[0].start_ms // FRAME_MS
        if self.chunker.start_slot is not None:
            return self.chunker.start_slot
        return max(self.clock.now_slot(), 0)

    async def run(self, source: Source) -> RecorderResult:
        """Capture until stop (call `prepare` first); returns how many chunks were written
        and why it ended."""
        uploader_task = asyncio.create_task(self._upload_loop())
        source_task = asyncio.create_task(source.run(self.source_stop))
        reason = "stopped"
        error: BaseException | None = None
        max_ms = self.spec.limits.max_duration_seconds * 1000
        last_now = self.clock.now_slot()  # the last tick's slot before a clock step
        try:
            while not self.stop.is_set():
                await asyncio.sleep(TICK_S)
                now = self.clock.now_slot()
                if self.kube.deleted.is_set():
                    reason = "session-deleted"
                    break
                stepped = self.clock.wall_stepped() \
                    or self.clock.stepped(self.kube.clock_offset_ms)
                if stepped is not None:  # windows would go off: measure again (a restart)
                    error, reason = TemporaryFailure(stepped), "clock-stepped"
                    log.error("%s", stepped)
                    break
                last_now = now
                if source_task.done() and source_task.exception() is not None:
                    error = source_task.exception()
                    reason = "source-failed"
                    log.error("source failed: %s", error)
                    break
                ended = getattr(source, "end_reason", None) if source_task.done() else None
                if ended:  # the source stopped by itself (auto-stop): a normal end
                    reason = str(ended)
                    break
                if uploader_task.done():  # it only ends early by failing: stop capturing
                    error = uploader_task.exception()
                    reason = "upload-failed"
                    log.error("upload failed: %s", error)
                    break
                if now * FRAME_MS >= max_ms:
                    reason = "max-duration"
                    break
                if self.uploader.stats.bytes >= self.spec.limits.max_bytes:
                    reason = "max-bytes"
                    break
                await self._follow_pause(now)
                self.follow_consent()
                while self.chunker.due(sealable_slot(now, source_watermark(source))):
                    await self._spool(self.chunker.seal())
            def now_slot() -> int:  # after a clock step, the time before it
                return last_now if reason == "clock-stepped" else self.clock.now_slot()

            await seal_tail(  # the last word on consent for the last chunk: follow_consent
                self.chunker, min(now_slot(), max_ms // FRAME_MS),
                lambda: sealable_slot(now_slot(), source_watermark(source)),
                self._spool, 0.0 if source_task.done() else TAIL_WAIT_MAX_S,
                self.follow_consent)
        finally:
            if arms_at_once(reason, self.forced()):
                self.flush.arm(len(self._pending))
            arming = asyncio.create_task(self.flush.arm_when_forced(
                self.forced, lambda: len(self._pending), TICK_S))
            self.source_stop.set()
            self._closed = True
            self._wake.set()
            if not uploader_task.done():
                if self.flush.at is None and self._pending:
                    log.warning("capture ended (%s); uploading %d spooled chunk(s) without a "
                                "deadline until done, SIGTERM or the session's deletion",
                                reason, len(self._pending))
                await asyncio.gather(uploader_task, return_exceptions=True)
            source_task.cancel()
            await asyncio.gather(source_task, return_exceptions=True)
            if self._pending and keeps_spool(reason, error, self.forced()):
                # the container restarts in this pod: its next run adopts the spool
                log.warning("capture ended (%s): %d chunk(s) not uploaded left in the spool "
                            "for the restarted container", reason, len(self._pending))
            else:
                await asyncio.to_thread(self._give_up, self.flush.marker_at)
                self.follow_consent()  # what the session watch saw while uploads drained
                await asyncio.to_thread(self._mark_consent, self.flush.marker_at)
            arming.cancel()
            await asyncio.gather(arming, return_exceptions=True)
        log.info("recorder ends (%s): %d chunks, %d bytes", reason, self.uploader.stats.chunks,
                 self.uploader.stats.bytes)
        return RecorderResult(chunks=self.uploader.stats.chunks, reason=reason, error=error)

    def forced(self) -> bool:
        """Whether the end is forced: SIGTERM (`stop`: the pod is being deleted, its
        termination grace runs) or the session deleted (its recorder pod goes next)."""
        return self.stop.is_set() or self.kube.deleted.is_set()

    async def _follow_pause(self, now: int) -> None:
        """Pause at slot `now` (`Chunker.stop`: the loop seals by the seal rule) or resume
        there after a `paused` gap (`Chunker.open` queues it until that seal)."""
        paused = bool(self.kube.paused)
        if paused and self._paused_at is None:
            self.chunker.stop(now)
            self._paused_at = now
            log.info("paused at %d ms", now * FRAME_MS)
            await self._keep_unsaid()  # where it began, until its window is spooled
        elif not paused and self._paused_at is not None:
            start = self._paused_at  # after a restart: the last chunk's end, maybe ahead
            self._paused_at = None
            gap = Gap(start_ms=start * FRAME_MS, end_ms=now * FRAME_MS, cause="paused") \
                if now > start else None
            now = max(now, start)  # never over the last chunk (promotion refuses overlaps)
            self.chunker.open(now, gap)
            log.info("resumed at %d ms", now * FRAME_MS)
            await self._keep_unsaid()  # the pause, until a chunk spooled carries it

    def _unsaid_now(self) -> list[Gap]:
        """What a restarted container must carry (`gaps.unsaid_now`): `_unsaid`, the
        `paused` gap of a resume not spooled yet, and a pause (and resumes) waiting for
        the stopped window's seal, from where the pause began."""
        return unsaid_now(self._unsaid, self.chunker.unsealed(), self._paused_at is not None)

    async def _keep_unsaid(self) -> None:
        """Keep `_unsaid_now` in `unsaid.json` (`Spool.save_unsaid`: only when changed;
        never raises). Before, a resumed pause lived in the chunker only: a restart before
        its chunk was spooled made it `recorder-restart` time (silence, not cut)."""
        await asyncio.to_thread(self.uploader.spool.save_unsaid, self._unsaid_now())

    async def _spool(self, chunk: SealedChunk | None) -> None:
        """Write a sealed chunk to the spool and queue its upload. When the spool is full,
        or writing it fails otherwise (an OSError such as EIO, EDQUOT or EROFS, a spec the
        model refuses: logged with its traceback; before, it ended the run and the
        container crash-looped), the chunk is dropped: its index goes back to the chunker,
        its window becomes a `connection-lost` gap and the gap it carried keeps its cause,
        both carried by the next chunk spooled. Gaps of different causes waiting for one
        chunk (a pause next to a dropped window) go each in its own chunk: marker chunks
        without tracks before it (`gaps.carry`), spooled with it or not at all; before,
        one `connection-lost` gap took them all and a pause became silence."""
        if chunk is None:
            return
        waiting = unsaid(self._unsaid + ([chunk.gap] if chunk.gap is not None else []),
                         chunk.start_ms)
        markers, gap = carry(waiting)
        items = [SealedChunk(index=chunk.index + i, start_ms=m.start_ms, end_ms=m.end_ms,
                             gap=m.gap, opted_out=list(chunk.opted_out),
                             consent_degraded=chunk.consent_degraded)
                 for i, m in enumerate(markers)]
        items.append(replace(chunk, index=chunk.index + len(markers), gap=gap))
        spooled: list[SpooledChunk] = []
        try:
            for item in items:
                spooled.append(await asyncio.to_thread(self.uploader.spool_chunk, item))
        except Exception as err:  # any failure to keep it drops the window (not a crash)
            for done in spooled:  # all or nothing: the markers wait with the window
                self.uploader.spool.remove(done)
            self.chunker.reclaim(chunk)
            window = Gap(start_ms=chunk.start_ms, end_ms=chunk.end_ms, cause=LOST)
            self._unsaid = unsaid([*waiting, window], chunk.end_ms)
            log.error("chunk %d [%d, %d) ms dropped: %s; not carried yet: %s", chunk.index,
                      chunk.start_ms, chunk.end_ms, err, spans(self._unsaid),
                      exc_info=not isinstance(err, SpoolFull))
            # kept on disk: a restart (while paused too) carries them with their causes
            await self._keep_unsaid()
            return
        self.chunker.next_index += len(markers)
        self._unsaid = []  # the chunks spooled carry them now
        self._last = (chunk.end_ms, list(chunk.opted_out))
        self._pending.extend(spooled)
        self._wake.set()
        await self._keep_unsaid()  # [], or the pause a queued resume opened with

    async def _upload_loop(self) -> None:
        """Upload spooled chunks in index order until closed and drained; a chunk leaves
        `_pending` only once acknowledged. Ends by raising when an upload fails for good
        (InvalidInputError) or the flush deadline passes (TemporaryFailure)."""
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.to_thread(self.uploader.upload, self._pending[0],
                                    lambda: self.flush.at, self.forced)
            self._pending.popleft()

    def _give_up(self, deadline: Deadline) -> None:
        """At stop: the lost window's markers (`stopmarkers.give_up`; it leaves in
        `_unsaid`, and the spool, what the markers made do not carry). Runs in a thread."""
        last = give_up(self._pending, self._unsaid, self.chunker, self.consent,
                       self.uploader, deadline)
        if last is not None:
            self._last = last

    def _mark_consent(self, deadline: Deadline) -> None:
        """At stop, after `_give_up` and once nothing is left to upload: the consent
        marker (`stopmarkers.mark_consent`). Runs in a thread."""
        if self._pending:
            return
        last = mark_consent(self._last, self._unsaid, self.chunker, self.consent,
                            self.uploader, deadline)
        if last is not None:
            self._last = last
