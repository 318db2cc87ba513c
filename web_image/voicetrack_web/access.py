"""What a logged-in user may see, read from the SQL tables (read-only).

The rule (issue 14): in a guild the user is a member of, a `manager` (owner, Manage Server
0x20 or Administrator 0x8) sees every meeting; any other member sees the meetings in which
they spoke: a speaker row in `recordings` or a row in `temp_recordings` with their user id.
Everything else does not exist for them: `meeting()` returns None, and the app answers 404.
The rule's one statement is `voicetrack.visibility` (the bot applies it too); here it is
the SQL clause `MeetingAccess._visible`.

The engine is read-only at the database: PostgreSQL sessions start with
`default_transaction_read_only=on`, SQLite connections with `PRAGMA query_only=ON`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import event, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from voicetrack.db.engine import parse_url
from voicetrack.db.schema import Meeting, Recording, RecordingKind, TempRecording
from voicetrack.layout import MIX_TRACK

MEETINGS_PER_PAGE = 100
"""How many meetings of a guild the list shows (newest first)."""


@dataclass(frozen=True)
class Viewer:
    """Who asks: their user id and, per guild id they are a member of, whether they
    manage it."""

    user_id: str
    guilds: dict[str, bool]


@dataclass(frozen=True)
class Track:
    """A final track: `track` is the speaker's user id or `mix`; `duration_ms` in ms."""

    track: str
    kind: str
    format: str
    object_key: str
    sha256: str | None
    duration_ms: int | None
    bytes: int | None


@dataclass
class MeetingView:
    """One meeting as the page shows it. `chunks` counts the live chunk tracks per
    transcode status (`queued`, `in_progress`, `done`, `failed`) and `chunk_count` the
    distinct chunks; `duration_ms` is the final tracks' length, else the wall time so far
    (ms)."""

    id: str
    guild_id: str
    channel_id: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    speakers: list[str] = field(default_factory=list)
    chunks: dict[str, int] = field(default_factory=dict)
    chunk_count: int = 0
    duration_ms: int | None = None
    tracks: list[Track] = field(default_factory=list)
    failure_reason: str | None = None
    consent_degraded: dict[str, str] | None = None
    """`{reason, message}` when role opt-outs were not enforced as asked while it recorded
    (`meetings.consent_degraded_*`, docs/consent.md); None when consent ran as asked."""
    root: str | None = None
    """`<prefix>/<guild>/<meeting>`, read from an object key of the meeting (a final
    track's or a chunk's); None when no row names one yet."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `/api/...` answers (times ISO 8601 UTC; no object keys)."""
        return {
            "id": self.id, "guild_id": self.guild_id, "channel_id": self.channel_id,
            "status": self.status, "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "speakers": self.speakers, "chunks": self.chunks, "chunk_count": self.chunk_count,
            "duration_ms": self.duration_ms, "failure_reason": self.failure_reason,
            "consent_degraded": self.consent_degraded,
            "tracks": [{"track": t.track, "kind": t.kind, "format": t.format,
                        "sha256": t.sha256, "duration_ms": t.duration_ms, "bytes": t.bytes}
                       for t in self.tracks]}


def read_only_engine(url: str) -> AsyncEngine:
    """An engine for `url` (`voicetrack.db.engine.parse_url` URLs) whose connections refuse
    writes. Raises InvalidInputError for an unsupported URL."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed)

        @event.listens_for(engine.sync_engine, "connect")
        def _query_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only=ON")
            cursor.close()

        return engine
    return create_async_engine(
        parsed, pool_pre_ping=True,
        connect_args={"options": "-c default_transaction_read_only=on"})


class MeetingAccess:
    """Reads meetings for a `Viewer`; every method applies the visibility rule."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    @staticmethod
    def _visible(viewer: Viewer, guild_id: str) -> Any:
        """The WHERE clause of meetings of `guild_id` that `viewer` may see."""
        clause = Meeting.guild_id == guild_id
        if viewer.guilds.get(guild_id):
            return clause
        spoke = or_(
            exists().where(Recording.meeting_id == Meeting.id,
                           Recording.user_id == viewer.user_id),
            exists().where(TempRecording.meeting_id == Meeting.id,
                           TempRecording.user_id == viewer.user_id))
        return clause & spoke

    async def guilds_with_meetings(self, guild_ids: Iterable[str]) -> set[str]:
        """Which of `guild_ids` have at least one meeting (any status)."""
        ids = list(guild_ids)
        if not ids:
            return set()
        async with self.sessions() as s:
            rows = await s.scalars(select(Meeting.guild_id).where(
                Meeting.guild_id.in_(ids)).distinct())
            return set(rows)

    async def meetings(self, viewer: Viewer, guild_id: str) -> list[MeetingView] | None:
        """The guild's meetings `viewer` may see, newest first (at most
        MEETINGS_PER_PAGE); None when they are not a member of the guild."""
        if guild_id not in viewer.guilds:
            return None
        async with self.sessions() as s:
            rows = list(await s.scalars(
                select(Meeting).where(self._visible(viewer, guild_id))
                .order_by(Meeting.started_at.desc()).limit(MEETINGS_PER_PAGE)))
            return await self._views(s, rows)

    async def meeting(self, viewer: Viewer, meeting_id: str) -> MeetingView | None:
        """One meeting with its tracks, or None when it does not exist for `viewer`
        (unknown, another guild's, or one they did not speak in without managing)."""
        async with self.sessions() as s:
            row = await s.get(Meeting, meeting_id)
            if row is None or row.guild_id not in viewer.guilds:
                return None
            visible = await s.scalar(select(Meeting.id).where(
                Meeting.id == meeting_id, self._visible(viewer, row.guild_id)))
            if visible is None:
                return None
            views = await self._views(s, [row])
            return views[0]

    async def _views(self, s: Any, meetings: Sequence[Meeting]) -> list[MeetingView]:
        ids = [m.id for m in meetings]
        views = {m.id: MeetingView(m.id, m.guild_id, m.channel_id, m.status, m.started_at,
                                   m.ended_at, failure_reason=m.failure_reason,
                                   consent_degraded={
                                       "reason": m.consent_degraded_reason,
                                       "message": m.consent_degraded_message or ""}
                                   if m.consent_degraded_reason else None)
                 for m in meetings}
        if not ids:
            return []
        temp = await s.execute(select(
            TempRecording.meeting_id, TempRecording.chunk_index, TempRecording.user_id,
            TempRecording.transcode_status, TempRecording.pcm_path)
            .where(TempRecording.meeting_id.in_(ids)))
        chunk_sets: dict[str, set[int]] = {}
        speakers: dict[str, set[str]] = {i: set() for i in ids}
        for mid, index, user, status, pcm_path in temp:
            v = views[mid]
            v.root = v.root or meeting_root(pcm_path, v.guild_id, v.id)
            key = str(getattr(status, "value", status))
            v.chunks[key] = v.chunks.get(key, 0) + 1
            if index is not None:
                chunk_sets.setdefault(mid, set()).add(index)
            if user:
                speakers[mid].add(user)
        recs = await s.scalars(select(Recording).where(Recording.meeting_id.in_(ids))
                               .order_by(Recording.kind.desc(), Recording.user_id))
        for r in recs:
            v = views[r.meeting_id]
            if r.kind == RecordingKind.SPEAKER.value and r.user_id:
                speakers[r.meeting_id].add(r.user_id)
            if r.object_key:
                v.root = v.root or meeting_root(r.object_key, v.guild_id, v.id)
                v.tracks.append(Track(r.user_id or MIX_TRACK, r.kind, r.format or "mp3",
                                      r.object_key, r.sha256, r.duration_in_ms, r.bytes))
            if r.duration_in_ms is not None:
                v.duration_ms = max(v.duration_ms or 0, r.duration_in_ms)
        for mid, v in views.items():
            v.speakers = sorted(speakers[mid])
            v.chunk_count = len(chunk_sets.get(mid, ()))
            if v.duration_ms is None:
                end = v.ended_at or datetime.now(v.started_at.tzinfo)
                v.duration_ms = max(0, int((end - v.started_at).total_seconds() * 1000))
        return [views[i] for i in ids]


def meeting_root(key: str | None, guild_id: str, meeting_id: str) -> str | None:
    """`<prefix>/<guild>/<meeting>` of an object key written under that meeting's
    `voicetrack.layout.MeetingLayout` (`<root>/chunks/...`, `<root>/outputs/...`,
    `<root>/final/...`); None for a key of another layout."""
    if not key:
        return None
    tail = f"{guild_id}/{meeting_id}/"
    at = key.find(tail)
    while at > 0 and key[at - 1] != "/":
        at = key.find(tail, at + 1)
    if at < 0:
        return None
    return key[: at + len(tail) - 1]
