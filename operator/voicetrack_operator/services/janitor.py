"""Operator-wide housekeeping: the heartbeat row, and the sweep of what deletion left behind
(chunk objects and temp rows of meetings no session owns any more).

The sweep lists only the buckets sessions may use (`OperatorSettings.allowed_buckets`), a
page of keys at a time, and deletes only what was provably promoted; it reports the rest
(a warning per sweep, and the gauge `voicetrack_orphans_kept{kind, reason}`) for a person
to decide. A
chunk object `<prefix>/<guild>/<meeting>/chunks/<index>/…` (or transcoder output
`…/outputs/<index>/…`) of a meeting no listed session owns is deleted only when all of
these hold (`JanitorService.judge`; the reason it is kept otherwise in brackets):

1. the database knows the meeting, for that guild [`unknown_meeting`], and the meeting
   has ended [`not_ended`] more than the TTL ago [`recently_ended`]: the age that counts
   is the time the meeting was orphaned, never the objects' upload time;
2. the meeting was promoted: it has `recordings` rows, or its `final/manifest.json` names
   it and every final object in it has the size and sha256 the manifest says
   [`not_promoted`];
3. the chunk's folder was promoted: the stored promotion plan (`promotion.json`, which
   deletion removes only after collecting every folder it names) lists its index
   [`not_in_plan`].

So raw audio nobody promoted stays in S3: that of a session released unpromoted (Refused
with MeetingIdInUse after it recorded; a PromotionFailed session whose finalizer an admin
removed), the chunk folders deletion leaves on purpose ("neither promoted nor kept": no
manifest, windows overlapping an earlier chunk's), and objects of meeting ids the database
does not know. Temp rows get the same care (`RecordingStore.cleanup_old_temp_recordings`):
only those of meetings that ended more than the TTL ago with `recordings` rows go.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.layout import MeetingLayout, parse_key
from voicetrack.manifests import FinalManifest, PromotionPlan
from voicetrack.names import meeting_id_for, session_meeting_id
from voicetrack_operator.adapters.objects import LIST_PAGE, AsyncObjectStore
from voicetrack_operator.context import Context
from voicetrack_operator.services.promotion import PromotionFailed, verify_outputs

log = logging.getLogger(__name__)

SERVICE_NAME = "voicetrack-operator"

KEPT_REASONS = ("unknown_meeting", "not_ended", "recently_ended", "not_promoted",
                "not_in_plan")
"""Why the sweep keeps a chunk object (the module docstring; the gauge's `reason`)."""

KEPT_LOG_LIMIT = 20
"""Meetings named in a sweep's warning about what it kept (the rest are counted)."""


@dataclass(frozen=True)
class Verdict:
    """What the sweep may do with one meeting's chunk objects: `reason` why they are all
    kept (one of KEPT_REASONS), or None when the meeting was promoted, and then `planned`,
    the chunk indices its stored promotion plan names (only those folders go)."""

    reason: str | None = None
    planned: frozenset[int] = frozenset()

    def keeps(self, index: int | None) -> str | None:
        """Why the object of chunk `index` is kept, None when it may be deleted."""
        if self.reason is not None:
            return self.reason
        return None if index in self.planned else "not_in_plan"


@dataclass
class SweepReport:
    """What one sweep kept: chunk objects by reason, and per meeting folder
    (`bucket/<root>`) its reason and object count."""

    kept: Counter[str] = field(default_factory=Counter)
    meetings: dict[str, tuple[str, int]] = field(default_factory=dict)

    def keep(self, bucket: str, root: str, reason: str) -> None:
        self.kept[reason] += 1
        where = f"{bucket}/{root}"
        _, n = self.meetings.get(where, (reason, 0))
        self.meetings[where] = (reason, n + 1)


class JanitorService:
    """The heartbeat and the orphan sweep, both safe to run at any time."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.places: set[tuple[str, str]] = set()
        """Every (bucket, prefix) of an allowed bucket a session was seen to use while this
        janitor lives (one per operator process): a deleted session's storage is still
        swept."""

    async def beat(self, status: str = "ok") -> bool:
        """Write the operator's heartbeat row; False when the database is unavailable."""
        try:
            await self.ctx.db.write_heartbeat(SERVICE_NAME, status)
            return True
        except TemporaryFailure as err:
            log.warning("heartbeat not written: %s", err)
            return False

    async def collect_orphans(self, prefix: str = "recordings") -> tuple[int, int]:
        """Sweep every allowed bucket (`OperatorSettings.allowed_buckets`) under each prefix
        sessions use there (the operator's bucket with `prefix`, each listed session's
        `spec.storage`, and those seen before): delete the chunk
        objects and temp rows of promoted meetings no live session owns (module
        docstring), report the rest. Returns (objects deleted, temp rows deleted). A
        place whose sweep fails (S3 or the database away) is skipped with a warning."""
        live: set[str] = set()
        self.places.add((self.ctx.settings.s3.bucket, prefix))
        for body in await self.ctx.kube.list_sessions():
            # raw fields, not a parsed spec: a session whose spec does not parse still
            # owns its meeting
            spec = body.get("spec") or {}
            live.add(session_meeting_id(body))  # the recorded meeting, not an edited spec's
            live.add(meeting_id_for(body["metadata"]["uid"], spec.get("meetingId")))
            storage = spec.get("storage") or {}
            self.places.add((str(storage.get("bucket") or self.ctx.settings.s3.bucket),
                             str(storage.get("prefix", prefix))))
        now, report, deleted = datetime.now(UTC), SweepReport(), 0
        allowed = self.ctx.settings.allowed_buckets  # a session refused elsewhere is not
        self.places = {p for p in self.places if p[0] in allowed}  # followed there
        for bucket, where in sorted(self.places):
            try:
                deleted += await self._sweep(bucket, where, live, now, report)
            except (TemporaryFailure, InvalidInputError, NotFoundError) as err:
                log.warning("orphan sweep of %s/%s skipped: %s", bucket, where, err)
        ttl = self.ctx.settings.temp_ttl
        rows = await self.ctx.db.cleanup_old_temp_recordings(ttl, now, keep_meetings=live)
        stale = await self.ctx.db.count_stale_temp_recordings(ttl, now, keep_meetings=live)
        self._report(report, stale, deleted, rows)
        return deleted, rows

    async def _sweep(self, bucket: str, prefix: str, live: set[str], now: datetime,
                     report: SweepReport) -> int:
        """Delete the chunk objects under `bucket`/`prefix` of meetings not in `live` that
        `judge` finds promoted, a page of keys at a time (never the whole listing in
        memory); add what it keeps to `report`. Returns how many it deleted."""
        store = self.ctx.store(bucket)
        head = prefix.strip("/")
        verdicts: dict[tuple[str, str], Verdict] = {}
        doomed: list[str] = []
        deleted = 0
        async with contextlib.aclosing(store.object_pages(f"{head}/" if head else "")) as pages:
            async for page in pages:
                for key, _modified in page:
                    parsed = parse_key(key, prefix)
                    if parsed is None or parsed.area not in ("chunks", "outputs") \
                            or parsed.meeting_id in live:
                        continue
                    layout = parsed.layout(prefix)
                    ident = (parsed.guild_id, parsed.meeting_id)
                    if ident not in verdicts:
                        verdicts[ident] = await self.judge(store, layout, now)
                    why = verdicts[ident].keeps(parsed.index)
                    if why is None:
                        doomed.append(key)
                    else:
                        report.keep(bucket, layout.root, why)
                if len(doomed) >= LIST_PAGE:
                    deleted += await store.delete_keys(doomed)
                    doomed = []
        return deleted + await store.delete_keys(doomed)

    async def judge(self, store: AsyncObjectStore, layout: MeetingLayout, now: datetime
                    ) -> Verdict:
        """Whether the chunk objects of the meeting at `layout` (in `store`) may go, by
        the rules of the module docstring. Raises TemporaryFailure while the database or
        S3 is away (the place is then skipped)."""
        try:
            meeting = await self.ctx.db.get_meeting(layout.meeting_id)
        except NotFoundError:
            return Verdict("unknown_meeting")
        if meeting.guild_id != layout.guild_id:
            return Verdict("unknown_meeting")  # another guild's meeting id: not this one
        if meeting.ended_at is None:
            return Verdict("not_ended")
        if meeting.ended_at > now - self.ctx.settings.temp_ttl:
            return Verdict("recently_ended")
        if not (await self.ctx.db.get_recordings_for_meeting(layout.meeting_id)
                or await self.manifest_verified(store, layout)):
            return Verdict("not_promoted")
        return Verdict(planned=await self.planned_chunks(store, layout))

    @staticmethod
    async def manifest_verified(store: AsyncObjectStore, layout: MeetingLayout) -> bool:
        """Whether `final/manifest.json` of the meeting at `layout` parses, names this
        meeting, keeps its tracks under its `final/`, and every track has the size and
        sha256 it says (`promotion.verify_outputs`, streamed)."""
        try:
            manifest = FinalManifest.model_validate(
                await store.get_json(layout.final_manifest_key))
        except (NotFoundError, InvalidInputError, ValueError):
            return False
        if manifest.meeting_id != layout.meeting_id or any(
                not t.key.startswith(layout.final_root) for t in manifest.tracks):
            return False
        try:
            await verify_outputs(store, manifest)
        except PromotionFailed as err:
            log.warning("final manifest of %s does not verify: %s", layout.root, err)
            return False
        return True

    @staticmethod
    async def planned_chunks(store: AsyncObjectStore, layout: MeetingLayout
                             ) -> frozenset[int]:
        """The chunk indices the stored promotion plan of the meeting at `layout` names,
        when it is that meeting's (guild, meeting id, prefix); empty when there is none
        or it is unusable."""
        try:
            plan = PromotionPlan.model_validate(
                await store.get_json(layout.promotion_plan_key))
        except (NotFoundError, InvalidInputError, ValueError):
            return frozenset()
        if (plan.guild_id, plan.meeting_id, plan.prefix.strip("/")) != (
                layout.guild_id, layout.meeting_id, layout.prefix.strip("/")):
            return frozenset()
        return frozenset(c.index for c in plan.chunks)

    def _report(self, report: SweepReport, stale_rows: int, deleted: int, rows: int
                ) -> None:
        """Set the metrics of one sweep and log what it deleted and what it kept."""
        metrics = self.ctx.metrics
        for reason in KEPT_REASONS:
            metrics.orphans_kept.labels("chunk_objects", reason).set(report.kept[reason])
        metrics.orphans_kept.labels("temp_rows", "not_promoted").set(stale_rows)
        metrics.orphans_deleted.labels("chunk_objects").inc(deleted)
        metrics.orphans_deleted.labels("temp_rows").inc(rows)
        if deleted or rows:
            log.info("orphans of promoted meetings collected: %d object(s), %d temp row(s)",
                     deleted, rows)
        if report.meetings:
            named = sorted(report.meetings.items())[:KEPT_LOG_LIMIT]
            more = len(report.meetings) - len(named)
            log.warning(
                "orphan sweep kept %d chunk object(s) of %d meeting(s) no session owns, not "
                "provably promoted (check, then delete by hand): %s%s",
                sum(report.kept.values()), len(report.meetings),
                "; ".join(f"{where} {n} ({why})" for where, (why, n) in named),
                f"; and {more} more" if more > 0 else "")
        if stale_rows:
            log.warning("orphan sweep kept %d temp row(s) older than the TTL of meetings no "
                        "session owns, not provably promoted", stale_rows)
