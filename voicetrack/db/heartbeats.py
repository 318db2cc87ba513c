"""`HeartbeatStore`: the `heartbeats` rows (one per service: last beat and status)."""

from __future__ import annotations

from datetime import datetime

from voicetrack.db.base import StoreBase
from voicetrack.db.checks import check_text, check_time, utcnow
from voicetrack.db.schema import Heartbeat


class HeartbeatStore(StoreBase):
    """Heartbeats: upsert and read. Never commits; times are UTC."""

    async def write_heartbeat(
        self, service_name: str, status: str, now: datetime | None = None
    ) -> Heartbeat:
        """Upsert the service's heartbeat: `last_beat` = `now` (default: current time)."""
        check_text("service_name", service_name, 64)
        check_text("status", status, 32)
        beat = check_time("now", now or utcnow())
        insert = self._insert(Heartbeat).values(
            service_name=service_name, last_beat=beat, status=status
        )
        await self.session.execute(
            insert.on_conflict_do_update(
                index_elements=["service_name"],
                set_={"last_beat": insert.excluded.last_beat, "status": insert.excluded.status},
            )
        )
        row = await self.read_heartbeat(service_name)
        assert row is not None
        return row

    async def read_heartbeat(self, service_name: str) -> Heartbeat | None:
        """The service's heartbeat, or None if it never beat."""
        check_text("service_name", service_name, 64)
        return await self.session.get(Heartbeat, service_name, populate_existing=True)
