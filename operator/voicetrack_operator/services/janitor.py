"""Operator-wide housekeeping: the heartbeat row, and orphaned temporary data older than
the TTL (chunk objects and temp rows of meetings no session owns any more)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from voicetrack.errors import TemporaryFailure
from voicetrack.layout import parse_key
from voicetrack.resources import meeting_id_for
from voicetrack_operator.context import Context

log = logging.getLogger(__name__)

SERVICE_NAME = "voicetrack-operator"


class JanitorService:
    """The heartbeat and the orphan sweep, both safe to run at any time."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

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
        the operator's bucket, and temp rows older than the TTL. Returns (objects, rows)."""
        live: set[str] = set()
        for body in await self.ctx.kube.list_sessions():
            # raw fields, not a parsed spec: a session whose spec does not parse still
            # owns its meeting
            spec_meeting = (body.get("spec") or {}).get("meetingId")
            live.add(meeting_id_for(body["metadata"]["uid"], spec_meeting))
            if (body.get("status") or {}).get("meetingId"):
                live.add(body["status"]["meetingId"])
        store = self.ctx.store(self.ctx.settings.s3.bucket)
        cutoff = datetime.now(UTC) - self.ctx.settings.temp_ttl
        stale = []
        for key, modified in await store.list_objects(f"{prefix.strip('/')}/"):
            parsed = parse_key(key, prefix)
            if parsed is not None and parsed.area == "chunks" and modified < cutoff \
                    and parsed.meeting_id not in live:
                stale.append(key)
        deleted = await store.delete_keys(stale)
        rows = await self.ctx.db.cleanup_old_temp_recordings(self.ctx.settings.temp_ttl,
                                                             keep_meetings=live)
        if deleted or rows:
            log.info("orphans collected: %d object(s), %d temp row(s)", deleted, rows)
        return deleted, rows
