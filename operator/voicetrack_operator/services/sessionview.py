"""A RecordingSession as the services read it: `SessionView` (its ref, parsed spec,
status, and what follows from them: meeting id, state, key layout), `Observed` (what the
watches show of it, so the observe timer reads no API), and the RFC 3339 times of its
status (`rfc3339`, `parse_time`). Plain data and parsing, no I/O; what happens to a
session is `services.sessions` and `services.deletion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from voicetrack.errors import InvalidInputError
from voicetrack.layout import MeetingLayout
from voicetrack.names import meeting_id_for
from voicetrack.resources import SessionSpec, SessionState
from voicetrack_operator.builders import SessionRef


@dataclass
class Observed:
    """What the watches show of one session (kopf's in-memory indexes,
    `handlers/index.py`), so observing it reads no API: its recorder pod (None when there
    is none), its RecordingChunks and its transcoder Jobs, as plain dicts."""

    pod: dict[str, Any] | None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    live: list[dict[str, Any]] = field(default_factory=list)
    """Its live-assembly Jobs (`services.live`)."""


@dataclass
class SessionView:
    """A RecordingSession as the services need it."""

    ref: SessionRef
    spec: SessionSpec
    status: dict[str, Any]
    generation: int
    created: str
    deletion: str | None = None
    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> SessionView:
        """Parse a RecordingSession. Raises InvalidInputError naming the bad field."""
        meta = body["metadata"]
        try:
            spec = SessionSpec.model_validate(body.get("spec", {}))
        except ValueError as err:
            raise InvalidInputError(f"invalid spec: {err}") from err
        return cls(ref=SessionRef(name=meta["name"], namespace=meta["namespace"],
                                  uid=meta["uid"]),
                   spec=spec, status=dict(body.get("status") or {}),
                   generation=int(meta.get("generation", 1)),
                   created=str(meta.get("creationTimestamp", "")),
                   deletion=meta.get("deletionTimestamp"), body=body)

    @property
    def meeting_id(self) -> str:
        """status.meetingId once the operator recorded it (an edited spec.meetingId does
        not move a started session), else spec.meetingId, else one derived from the uid
        (stable across retries)."""
        return meeting_id_for(self.ref.uid, self.spec.meeting_id, self.status.get("meetingId"))

    @property
    def state(self) -> SessionState | None:
        """status.state, None before the operator wrote one (or for a value it never
        writes)."""
        try:
            return SessionState(self.status.get("state", ""))
        except ValueError:
            return None

    @property
    def layout(self) -> MeetingLayout:
        """The S3 key layout of the session's meeting (its prefix, guild and meeting id)."""
        return MeetingLayout(self.spec.storage.prefix, self.spec.guild_id, self.meeting_id)


def rfc3339(dt: datetime) -> str:
    """`dt` as the API writes times: UTC, whole seconds, `Z` (`2026-01-02T03:04:05Z`)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp (`Z` or an offset) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
