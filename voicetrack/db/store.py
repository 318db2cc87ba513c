"""`RecordingStore`: the SQL statements of the two-tier storage, on one `AsyncSession`.

A store never commits and never opens a transaction (STYLE.md item 12): the caller
(`voicetrack.db.service.RecordingService`) owns `async with session.begin()`. Input is
checked before any statement runs, so bad input raises `InvalidInputError` (or
`NotFoundError`) naming the field and changes nothing. Database client errors are not caught
here; the service translates them at its boundary.

The statements live along their tables; `RecordingStore` joins them on one session:

- `voicetrack.db.meetings.MeetingStore`: get, create (idempotent), end, mark degraded
  consent;
- `voicetrack.db.temp_recordings.TempRecordingStore`: the seeds' temp-row methods
  (`insert_temp_recording`, `update_temp_recording_transcode_started|completed|failed`,
  `mark_temp_recording_cleaned`, `get_temp_recordings_for_meeting`,
  `delete_temp_recordings`), the mirror's `upsert_chunk_status`, the TTL cleanup;
- `voicetrack.db.recordings.PersistentRecordingStore`: `insert_persistent_recording`,
  `get_recordings_for_meeting`, `promote_temp_recordings_to_persistent`;
- `voicetrack.db.heartbeats.HeartbeatStore`: write and read heartbeats;
- `voicetrack.db.webhooks.WebhookStore`: the completion webhook's deliveries and attempts;
- `voicetrack.db.checks`: the input checks, `new_id`, `utcnow`.
"""

from __future__ import annotations

from voicetrack.db.checks import new_id, utcnow
from voicetrack.db.heartbeats import HeartbeatStore
from voicetrack.db.meetings import MeetingStore
from voicetrack.db.recordings import PersistentRecordingStore
from voicetrack.db.temp_recordings import TempRecordingStore
from voicetrack.db.webhooks import WebhookStore

__all__ = [
    "HeartbeatStore",
    "MeetingStore",
    "PersistentRecordingStore",
    "RecordingStore",
    "TempRecordingStore",
    "WebhookStore",
    "new_id",
    "utcnow",
]


class RecordingStore(TempRecordingStore, PersistentRecordingStore, HeartbeatStore,
                     WebhookStore):
    """The storage statements on one `AsyncSession` that the caller's transaction holds.

    Never commits. Every method checks its input first (`InvalidInputError` naming the
    field; `NotFoundError` for an unknown meeting or temp id) and returns ORM objects,
    refreshed from the database. Times are timezone-aware UTC."""
