"""The audio so far of a live session: when to run a live-assembly Job, and what the
session's `status.live` says.

While a session records, each chunk's transcoder Job also makes the chunk's MP3 piece of
the final tracks; a live Job (`jobs.build_live_job`, `voicetrack-transcoder live`)
joins the pieces of chunks `0..N-1` into `live/<track>.mp3` and `live/manifest.json`
(extending the last Job's tracks from `live/state.json`: it reads only the chunks after
them; with no state, e.g. once `live/` is emptied, from chunk 0). The
observe timer calls `LiveService.tick` with what the watches show (no API read): it
decides with the pure `decide`, deletes a superseded Job still running (finished ones go by
their `ttlSecondsAfterFinished`), starts the next one, and reads the
manifest of a Job that completed (one S3 read per live Job) for the status.

Debounce: at most one live Job per session runs; a new one starts only when more chunks
are transcoded than the audio so far covers and `interval_s` has passed since the last one
started (at least two chunk periods: `LiveService.interval_s`; counted on the operator's
monotonic clock from its last create, `ctx.live_launched`, so it holds after the finished
Job left the watch at its TTL and whatever the API server's clock says). A Job's create is
the session's one budgeted write of its chunk period (`services.sessions`, issue 16: the
operator's writes per chunk ≤ 4), so a due Job waits for a period whose write is free, and
the progress patch of that period waits for the next: with the interval at least two
periods, the progress patch gets at least every other period (chunk counts at most two
chunk periods old). `status.live` rides on the period's status patch (alone when nothing
else changed), for the newest completed Job; a pending report has the period's write
before a launch (the launch takes the next free period), so no newer Job has written the
manifest the report reads, and reports and launches alternate whatever the timer's pace:
usually a chunk period after the Job ended (`REPORT_WAIT_MAX_S` at most);
`live/manifest.json`, what `recordings download --live` and the web page read, is current
at once. A failed live Job (a piece missing, S3 down) marks nothing failed: the previous
live files stay (the transcoder uploads only a complete set) and the next interval tries
again; after `LIVE_TRIES` failed Jobs for the same chunks the wait doubles up to
`LIVE_BACKOFF_MAX_S` (a kept Stopped session whose Jobs cannot succeed costs a few Jobs an
hour, not one every interval). Deletion removes the live Jobs first (`stop`).

Consent (docs/consent.md, "Promotion"): a piece holds the audio of every speaker of its
chunk in their track and in the mix, and the mix cannot be remade from pieces without one
of them. So while a member who is opted out now (`spec.optOutUserIds`, or the
`optedOut` of the last consecutive chunk or of the latest one) has a track in any chunk
(`withheld`), live assembly stops: every live Job is deleted, `live/` is emptied on every
tick (a Job that was running may still upload) and `status.live` is removed. It resumes,
from chunk 0, once nobody is withheld (they opted back in: promotion keeps their audio
then too). A member opted out who never spoke
holds nothing back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.manifests import LiveManifest
from voicetrack.names import controller_uid
from voicetrack.resources import (
    LABEL_COMPONENT,
    SessionState,
    TranscodeStatus,
    pieced,
)
from voicetrack_operator.context import Context
from voicetrack_operator.jobs import (
    LABEL_LIVE_CHUNKS,
    LIVE_COMPONENT,
    LIVE_JOB_TTL_S,
    build_live_job,
)
from voicetrack_operator.services.chunkstate import job_state
from voicetrack_operator.services.livechunks import transcoded_run, withheld
from voicetrack_operator.services.sessionview import SessionView
from voicetrack_operator.status import live_status

log = logging.getLogger(__name__)

REPORT_WAIT_MAX_S = LIVE_JOB_TTL_S / 2
"""Longest wait (s) of a completed live Job's `status.live` report for the session's write
budget: half the Job's `ttlSecondsAfterFinished`, so the watch still shows it."""

LIVE_TRIES = 3
"""Live Jobs launched for the same chunks at the interval before the wait doubles
(`decide`), up to `LIVE_BACKOFF_MAX_S` (s) between two."""
LIVE_BACKOFF_MAX_S = 1800.0

LIVE_STATES = (SessionState.RECORDING, SessionState.PAUSED, SessionState.STOPPED,
               SessionState.FAILED)
"""States in which the audio so far is kept current: the recorder has run and the session
is not being deleted (its last chunks may still be transcoding after Stopped or Failed)."""


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class LiveJob:
    """A live-assembly Job as the watch shows it: its name, the chunks it assembles, its
    state (queued, in_progress, done, failed as `chunkstate.job_state` reads Jobs), when it
    was created and finished (None while not), and whether it is being deleted."""

    name: str
    chunks: int
    state: TranscodeStatus
    created: datetime | None = None
    finished: datetime | None = None
    deleting: bool = False

    @classmethod
    def from_object(cls, job: dict[str, Any]) -> LiveJob | None:
        """Parse a Job; None when it is not a live Job (its labels say otherwise)."""
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(LABEL_COMPONENT) != LIVE_COMPONENT:
            return None
        try:
            chunks = int(labels[LABEL_LIVE_CHUNKS])
        except (KeyError, ValueError):
            return None
        state, _ = job_state(job)
        status = job.get("status") or {}
        finished = _time(status.get("completionTime"))
        if finished is None and state is TranscodeStatus.FAILED:
            finished = next((_time(c.get("lastTransitionTime"))
                             for c in status.get("conditions") or []
                             if c.get("type") == "Failed"), None)
        return cls(name=str(meta.get("name", "")), chunks=chunks, state=state,
                   created=_time(meta.get("creationTimestamp")), finished=finished,
                   deleting=bool(meta.get("deletionTimestamp")))


@dataclass(frozen=True)
class LiveDecision:
    """What to do now: `launch` a Job for that many chunks (None: none), `delete` these
    Jobs (superseded and still running, or a failed one whose name the next launch needs),
    `report` the completed Job whose manifest is not in the status yet (None: nothing
    new)."""

    launch: int | None = None
    delete: list[str] = field(default_factory=list)
    report: LiveJob | None = None


def decide(jobs: list[LiveJob], ready: int, reported: int, interval_s: float,
           now: datetime, since_launch: float | None = None,
           tries: tuple[int, int] | None = None) -> LiveDecision:
    """The debounce, pure.

    `jobs`: the session's live Jobs; `ready`: chunks a Job could assemble now
    (`transcoded_run`); `reported`: chunks `status.live` says the audio so far covers (0
    before any); `interval_s`: the least time between two Jobs' starts (seconds; 0 or less:
    off, nothing is done); `now`: aware UTC; `since_launch`: seconds since this operator
    last created a live Job for the session (its monotonic clock), None when it has not
    (then the current Job's `creationTimestamp`, the API server's clock, is used);
    `tries`: (chunks, launches) of this operator's live Jobs for one chunk count since
    one succeeded (`ctx.live_tries`), None when none failed.

    The newest Job (most chunks, then latest created) is the current one; every other one
    still running is deleted (one at a time runs, so only a leftover), and a finished one is
    left to its `ttlSecondsAfterFinished` (`jobs.LIVE_JOB_TTL_S`): the Job controller
    removes it, one API write per live Job less of ours (issue 16). The newest completed
    Job (the current one or an older one, e.g. one whose report waited while the next was
    launched) is reported when it covers more than `reported`. A new Job is launched when
    none runs, `ready` exceeds what the audio so far covers (the newest completed Job's
    chunks, or `reported`), and `interval_s` has passed since the last launch
    (`since_launch`; without it, since the current Job was created, or at once when the
    watch shows none). If the new Job's name is taken by a failed current one (the same
    chunks again), that one is deleted now and the launch waits a tick; after `LIVE_TRIES`
    launches for the same chunks the interval doubles with each (`LIVE_BACKOFF_MAX_S`)."""
    if interval_s <= 0:
        return LiveDecision()
    live = [j for j in jobs if not j.deleting]
    current = max(live, key=lambda j: (j.chunks, j.created or now), default=None)
    delete = [j.name for j in live if j is not current and not j.state.terminal]
    report = None
    covered = reported
    done = max((j for j in live if j.state is TranscodeStatus.DONE),
               key=lambda j: (j.chunks, j.created or now), default=None)
    if done is not None:
        covered = max(covered, done.chunks)
        if done.chunks > reported:
            report = done
    running = current is not None and not current.state.terminal
    if since_launch is not None:
        due = since_launch >= interval_s
    else:
        due = current is None or current.created is None \
            or (now - current.created).total_seconds() >= interval_s
    if tries is not None and tries[0] == ready and tries[1] >= LIVE_TRIES \
            and since_launch is not None:
        due = since_launch >= min(interval_s * 2 ** (tries[1] - LIVE_TRIES + 1),
                                  LIVE_BACKOFF_MAX_S)
    launch = None
    if not running and due and ready > covered and ready > 0:
        if current is not None and current.chunks == ready:  # a failed one: its name
            delete.append(current.name)
        else:
            launch = ready
    return LiveDecision(launch=launch, delete=delete, report=report)


@dataclass(frozen=True)
class LiveTick:
    """What one `LiveService.tick` did: `patch`, the session status patch
    (`{"live": {...}}`, `{"live": None}` or {}), and whether it `launched` a live Job (an
    API write: the session's write of that chunk period)."""

    patch: dict[str, Any] = field(default_factory=dict)
    launched: bool = False


class LiveService:
    """Runs the live-assembly Jobs of sessions; the observe timer calls `tick`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def enabled(self, s: SessionView) -> bool:
        """Live assembly runs for session view `s` when the interval is on, the session's
        chunks get pieces (`resources.pieced`: MP3, FLAC, or both; the audio so far is
        MP3, from the MP3 pieces every such session's chunks get), and it has recorded
        (`LIVE_STATES`)."""
        return self.ctx.settings.live_interval_s > 0 and s.state in LIVE_STATES \
            and pieced(s.spec.output.formats)

    async def observe(self, s: SessionView, chunks: list[dict[str, Any]],
                      jobs: list[dict[str, Any]]) -> dict[str, Any]:
        """`tick` with the period's write free and a status patch going out: its patch."""
        return (await self.tick(s, chunks, jobs)).patch

    async def tick(self, s: SessionView, chunks: list[dict[str, Any]],
                   jobs: list[dict[str, Any]], *, slot: bool = True,
                   report: bool = True, since_launch: float | None = None) -> LiveTick:
        """One tick for session view `s` from the watches' view of its RecordingChunks
        and live Jobs: delete, launch, and the status patch (`{"live": {...}}` when a Job
        completed since the status was written, `{"live": None}` when withheld, else {}).

        The session's write budget (`services.sessions`, issue 16: one status patch or
        live Job create per chunk period): a Job is launched only when `slot` (the
        period's write is free), and then nothing is reported (the create is that write);
        a completed Job is reported (its manifest read) only when `report` (a status patch
        goes out this tick) or when it is `overdue`. A withdrawal is returned whatever the
        budget. `since_launch`: seconds since the caller last launched a Job for `s` (its
        monotonic clock; None: not known, `decide` goes by the Jobs' creation times). The
        API or S3 away is logged and the next tick tries again: the audio so far never
        holds up the session's status."""
        if not self.enabled(s):
            return LiveTick()
        try:
            return await self._tick(s, chunks, jobs, slot, report, since_launch)
        except TemporaryFailure as err:
            log.info("session %s/%s: audio so far not updated: %s", s.ref.namespace,
                     s.ref.name, err)
            return LiveTick()

    @staticmethod
    def overdue(job: LiveJob) -> bool:
        """True when completed `job` ended `REPORT_WAIT_MAX_S` ago or more: it is reported
        whatever the budget, before its TTL removes it from the watch (a chunk period over
        a minute would otherwise lose the report, and run the Job again)."""
        return job.finished is not None and \
            (datetime.now(UTC) - job.finished).total_seconds() >= REPORT_WAIT_MAX_S

    def interval_s(self, s: SessionView) -> float:
        """The least seconds between two live Jobs' starts for `s`: the setting, but at
        least two chunk periods, so the budget's periods between two launches leave one
        for the progress patch (a Job per period would starve it)."""
        return max(self.ctx.settings.live_interval_s, 2.0 * s.spec.chunk_seconds)

    async def _tick(self, s: SessionView, chunks: list[dict[str, Any]],
                    jobs: list[dict[str, Any]], slot: bool, report: bool,
                    since_launch: float | None) -> LiveTick:
        mine = [j for j in (LiveJob.from_object(o) for o in jobs
                            if controller_uid(o) == s.ref.uid) if j is not None]
        tries = self.ctx.live_tries.get(s.ref.uid)
        if tries and any(j.state is TranscodeStatus.DONE and j.chunks >= tries[0]
                         for j in mine):  # only the tries since a success count
            del self.ctx.live_tries[s.ref.uid]
            tries = None
        if withheld(s.spec, chunks):
            self.ctx.live_tries.pop(s.ref.uid, None)
            return LiveTick(await self.withhold(s, mine))
        reported = int((s.status.get("live") or {}).get("chunks") or 0)
        ready, silent = transcoded_run(chunks)
        decision = decide(mine, ready, reported, self.interval_s(s), datetime.now(UTC),
                          since_launch, tries)
        for name in decision.delete:
            await self.ctx.kube.delete_job(s.ref.namespace, name)
        # a pending report has the period's write before a launch (it rides on the
        # progress patch; the launch takes the next free period): launched first, the
        # report waited past the next Job's manifest (status.live paired one Job's chunks
        # with the next one's duration) or went overdue unbudgeted, and with a timer as
        # coarse as two periods every write was a launch and progress starved
        launched = decision.launch is not None and slot and decision.report is None
        if launched and decision.launch is not None:
            if await self.ctx.kube.ensure(build_live_job(
                    s.ref, s.spec, s.meeting_id, decision.launch, self.ctx.settings.pods,
                    silent)):
                n = tries[1] + 1 if tries and tries[0] == decision.launch else 1
                self.ctx.live_tries[s.ref.uid] = (decision.launch, n)
                if n == LIVE_TRIES:
                    log.warning("session %s/%s: live Jobs for %d chunk(s) keep failing; "
                                "the next ones wait longer", s.ref.namespace, s.ref.name,
                                decision.launch)
            log.info("session %s/%s: live Job for %d chunk(s)", s.ref.namespace, s.ref.name,
                     decision.launch)
        failed = [j for j in mine if j.state is TranscodeStatus.FAILED and j.name in
                  decision.delete]
        for j in failed:
            log.warning("session %s/%s: live Job %s failed; the audio so far stays at %d "
                        "chunk(s) and is assembled again", s.ref.namespace, s.ref.name,
                        j.name, reported)
        if decision.report is None or launched or not (report or self.overdue(
                decision.report)):
            return LiveTick(launched=launched)
        return LiveTick({"live": await self.read_live(s, decision.report)})

    async def withhold(self, s: SessionView, jobs: list[LiveJob]) -> dict[str, Any]:
        """Stop the audio so far while someone is withheld (module docstring): delete the
        live Jobs `jobs`, empty `live/` (every call: a deleted Job's pod may still
        upload), and return the patch removing `status.live` ({} when it is absent).
        Raises TemporaryFailure when S3 or the API is away (the next tick tries again)."""
        for job in jobs:
            if not job.deleting:
                await self.ctx.kube.delete_job(s.ref.namespace, job.name)
        await self.ctx.store(s.spec.storage.bucket).delete_prefix(s.layout.live_root)
        return {"live": None} if "live" in s.status else {}

    async def read_live(self, s: SessionView, job: LiveJob) -> dict[str, Any]:
        """`status.live` from `live/manifest.json` after `job` completed (`durationMs` 0
        when the Job found only silent chunks and wrote none). Raises TemporaryFailure
        when it cannot be read (S3 away, not a manifest)."""
        updated = (job.finished or datetime.now(UTC)).astimezone(UTC)
        try:
            doc = await self.ctx.store(s.spec.storage.bucket).get_json(
                s.layout.live_manifest_key)
            duration_ms = LiveManifest.model_validate(doc).duration_ms
        except NotFoundError:  # the Job found only silent chunks: nothing to hear yet
            duration_ms = 0
        except (InvalidInputError, ValueError) as err:
            raise TemporaryFailure(f"live manifest of {s.ref.name} unreadable: {err}",
                                   delay=5) from err
        return live_status(job.chunks, duration_ms, updated.strftime("%Y-%m-%dT%H:%M:%SZ"))

    async def stop(self, s: SessionView) -> int:
        """Delete the session's live Jobs (deletion's first step, once the recorder is
        gone: promotion never waits for the audio so far), and `live/` too when a member
        opted out at stop has audio in it (`withheld`, from the final chunks): it stays
        otherwise until the collection, minutes later for a long meeting. Returns how
        many Jobs were deleted. Raises TemporaryFailure when S3 or the API is away."""
        n = 0
        for job in await self.ctx.kube.list_jobs(s.ref.namespace, s.ref.name, s.ref.uid):
            if LiveJob.from_object(job) is not None:
                n += await self.ctx.kube.delete_job(s.ref.namespace, job["metadata"]["name"])
        if withheld(s.spec, await self.ctx.kube.list_chunks(s.ref.namespace, s.ref.name,
                                                            s.ref.uid)):
            await self.ctx.store(s.spec.storage.bucket).delete_prefix(s.layout.live_root)
        return n
