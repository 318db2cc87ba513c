"""Operator-wide housekeeping: the heartbeat row, and orphaned temporary data older than
the TTL (chunk objects and temp rows of meetings no session owns any more)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack_operator.context import Context
from voicetrack_operator.services.sessions import SessionView, derive_meeting_id

log = logging.getLogger(__name__)

SERVICE_NAME = "voicetrack-operator"


class JanitorService:
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
            try:
                live.add(SessionView.parse(body).meeting_id)
            except InvalidInputError:  # a spec we cannot parse still owns its meeting
                live.add((body.get("spec") or {}).get("meetingId")
                         or (body.get("status") or {}).get("meetingId")
                         or derive_meeting_id(body["metadata"]["uid"]))
        store = self.ctx.store(self.ctx.settings.s3.bucket)
        cutoff = datetime.now(UTC) - self.ctx.settings.temp_ttl
        objects = await asyncio.to_thread(store.list_objects, f"{prefix.strip('/')}/")
        stale = [key for key, modified in objects
                 if "/chunks/" in key and modified < cutoff
                 and key.split("/chunks/")[0].rsplit("/", 1)[-1] not in live]
        deleted = await asyncio.to_thread(store.delete_keys, stale)
        rows = await self.ctx.db.cleanup_old_temp_recordings(self.ctx.settings.temp_ttl,
                                                             keep_meetings=live)
        if deleted or rows:
            log.info("orphans collected: %d object(s), %d temp row(s)", deleted, rows)
        return deleted, rows
