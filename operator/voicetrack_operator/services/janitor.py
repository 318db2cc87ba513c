"""Operator-wide housekeeping: the heartbeat row, and orphaned temporary data older than
the TTL (chunk objects and temp rows of meetings no session owns any more)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.layout import parse_key
from voicetrack.names import meeting_id_for, session_meeting_id
from voicetrack_operator.context import Context

log = logging.getLogger(__name__)

SERVICE_NAME = "voicetrack-operator"


class JanitorService:
    """The heartbeat and the orphan sweep, both safe to run at any time."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.places: set[tuple[str, str]] = set()
        """Every (bucket, prefix) a session was seen to use while this janitor lives (one
        per operator process): a deleted session's storage is still swept."""

    async def beat(self, status: str = "ok") -> bool:
        """Write the operator's heartbeat row; False when the database is unavailable."""
        try:
            await self.ctx.db.write_heartbeat(SERVICE_NAME, status)
            return True
        except TemporaryFailure as err:
            log.warning("heartbeat not written: %s", err)
            return False

    async def collect_orphans(self, prefix: str = "recordings") -> tuple[int, int]:
        """Delete chunk objects older than the TTL whose meeting no live session owns, in
        every bucket and prefix sessions use (the operator's bucket with `prefix`, each
        listed session's `spec.storage`, and those seen before), and temp rows older than
        the TTL. Returns (objects, rows)."""
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
        deleted = 0
        for bucket, where in sorted(self.places):
            try:
                deleted += await self._sweep(bucket, where, live)
            except (TemporaryFailure, InvalidInputError, NotFoundError) as err:
                log.warning("orphan sweep of %s/%s skipped: %s", bucket, where, err)
        rows = await self.ctx.db.cleanup_old_temp_recordings(self.ctx.settings.temp_ttl,
                                                             keep_meetings=live)
        if deleted or rows:
            log.info("orphans collected: %d object(s), %d temp row(s)", deleted, rows)
        return deleted, rows

    async def _sweep(self, bucket: str, prefix: str, live: set[str]) -> int:
        """Delete the chunk objects under `bucket`/`prefix` older than the TTL whose meeting
        is not in `live`. Returns how many."""
        store = self.ctx.store(bucket)
        cutoff = datetime.now(UTC) - self.ctx.settings.temp_ttl
        head = prefix.strip("/")
        stale = []
        for key, modified in await store.list_objects(f"{head}/" if head else ""):
            parsed = parse_key(key, prefix)
            if parsed is not None and parsed.area in ("chunks", "outputs") \
                    and modified < cutoff \
                    and parsed.meeting_id not in live:
                stale.append(key)
        return await store.delete_keys(stale)
