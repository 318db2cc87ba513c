"""The bot's one read adapter for saved meetings: promotion manifests in S3, and the
audio so far of a live one (`live/manifest.json`, `live`/`live_links`).

A saved meeting is a `final/manifest.json` under `<prefix>/<guildId>/<meetingId>/`
(voicetrack.layout, voicetrack.manifests.FinalManifest); its tracks are the keys that
manifest names. Reading S3 rather than SQL keeps the bot on the two stores it already
needs (the Kubernetes API for sessions, S3 to sign links) and scopes every lookup by
construction: the guild id is part of every key read, so a meeting of another guild is
simply absent ("not found", nothing revealed). What S3 does not hold is the meeting's
start time: the manifest's last-modified time (when promotion finished) is shown instead.

Links are presigned GETs minted on request (`ObjectStore.presigned_link`, signed for
VOICETRACK_S3_PUBLIC_ENDPOINT when set), valid `DEFAULT_LINK_S` (15 min) unless asked
otherwise, never stored. The minio client is synchronous: every call runs in
`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest, LiveManifest, TrackT
from voicetrack.objectstore import DEFAULT_LINK_S, ObjectStore, PresignedUrl, S3Settings
from voicetrack.resources import MEETING_ID_PATTERN, StorageSpec
from voicetrack.trackchoice import select_tracks

MANIFEST_SUFFIX = "/final/manifest.json"
LIVE_LINK_S = 300
"""How long `/record status`'s links to the audio so far work (s): short, since the audio
so far is replaced every live interval."""
LIST_LIMIT = 10
"""Meetings `/record list` shows (the most recently saved first)."""


def one_per_track(tracks: list[TrackT], meeting_id: str, fmt: str | None = None
                  ) -> list[TrackT]:
    """One file per track, speakers in manifest order then the mix, in format `fmt` or
    by default mp3 when the track has it (`voicetrack.trackchoice.select_tracks`, the
    CLI's rule too). One link per track keeps an answer small: a presigned URL is some
    400 characters and Discord takes 6000 per message. Raises NotFoundError ("format:
    track … has no 'flac'; it has mp3") when a track lacks `fmt`; no tracks, no files."""
    if not tracks:
        return []
    chosen = select_tracks(tracks, None, fmt, meeting_id, format_option="format")
    return sorted(chosen, key=lambda t: t.kind == "mixed")


@dataclass(frozen=True)
class SavedMeeting:
    """A promoted meeting: its guild and id (strings), when its manifest was written
    (`saved_at`, UTC) and the manifest (durations in ms, tracks with keys and sha256)."""

    guild_id: str
    meeting_id: str
    saved_at: datetime
    manifest: FinalManifest

    @property
    def speakers(self) -> list[str]:
        """User ids of the speaker tracks, in manifest order, without repeats (one track
        per format)."""
        seen: dict[str, None] = {}
        for t in self.manifest.tracks:
            if t.kind == "speaker" and t.user_id:
                seen.setdefault(t.user_id, None)
        return list(seen)


@dataclass(frozen=True)
class TrackLink:
    """A minted link to one final track: `user_id` None for the mix; `link` is
    `{url, expires_in_seconds, format}`; `bytes` and `sha256` are the manifest's
    (`sha256` None for a live track: the live manifest has none)."""

    user_id: str | None
    kind: str
    link: PresignedUrl
    bytes: int
    sha256: str | None
    duration_ms: int


class MeetingArchive:
    """Saved meetings of the bot's storage (`bucket`, `prefix` of the sessions it makes),
    read from S3 with `settings`' credentials."""

    @classmethod
    def from_env(cls, spec_defaults: dict[str, Any]) -> MeetingArchive | None:
        """The archive of the sessions the bot makes: S3 from VOICETRACK_S3_ENDPOINT,
        _ACCESS_KEY, _SECRET_KEY (and _PUBLIC_ENDPOINT to sign for), bucket and prefix
        from `spec_defaults["storage"]` over the CRD's defaults. None when
        VOICETRACK_S3_ENDPOINT is unset (no links). Without both keys the AWS credential
        chain signs. Raises InvalidInputError naming a key given without the other."""
        if not os.environ.get("VOICETRACK_S3_ENDPOINT"):
            return None
        try:
            settings = S3Settings.from_env()
        except RuntimeError as err:
            raise InvalidInputError(str(err)) from err
        storage = StorageSpec.model_validate((spec_defaults or {}).get("storage") or {})
        return cls(settings, storage)

    def __init__(self, settings: S3Settings, storage: StorageSpec) -> None:
        self.settings = settings
        self.prefix = storage.prefix
        self.store = ObjectStore(dataclasses.replace(settings, bucket=storage.bucket))

    async def recent(self, guild_id: str, limit: int = LIST_LIMIT) -> list[SavedMeeting]:
        """The guild's `limit` most recently saved meetings, newest first. A manifest that
        does not parse is skipped. Raises TemporaryFailure (S3 away)."""
        root = MeetingLayout(self.prefix, guild_id, "").root + "/"
        found = await asyncio.to_thread(self.store.list_objects, root)
        manifests = sorted(((k, t) for k, t in found if k.endswith(MANIFEST_SUFFIX)),
                           key=lambda kt: kt[1], reverse=True)[:limit]
        out = []
        for key, saved_at in manifests:
            meeting_id = key[len(root):-len(MANIFEST_SUFFIX)]
            try:
                out.append(await self._read(guild_id, meeting_id, saved_at))
            except (NotFoundError, InvalidInputError):
                continue
        return out

    async def get(self, guild_id: str, meeting_id: str) -> SavedMeeting:
        """The saved meeting `meeting_id` of `guild_id`. Raises NotFoundError, with the
        same message whether it does not exist, belongs to another guild or is not an id
        at all; TemporaryFailure (S3 away)."""
        if not re.match(MEETING_ID_PATTERN, meeting_id or ""):
            raise self._not_found(meeting_id)
        try:
            return await self._read(guild_id, meeting_id, None)
        except (NotFoundError, InvalidInputError) as err:
            raise self._not_found(meeting_id) from err

    async def links(self, meeting: SavedMeeting, expires_s: int = DEFAULT_LINK_S,
                    fmt: str | None = None) -> list[TrackLink]:
        """A link per final track of `meeting` in format `fmt`, by default mp3 when there
        is one (`one_per_track`; speakers in manifest order, then the mix), each valid
        `expires_s` seconds from now. Raises InvalidInputError (expiry outside 1 s..7
        days) and NotFoundError (a track without `fmt`, naming the formats it has)."""
        def mint() -> list[TrackLink]:
            tracks = one_per_track(meeting.manifest.tracks, meeting.meeting_id, fmt)
            return [TrackLink(t.user_id, t.kind, self.store.presigned_link(t.key, expires_s),
                              t.bytes, t.sha256, t.duration_ms) for t in tracks]
        return await asyncio.to_thread(mint)

    async def _read(self, guild_id: str, meeting_id: str, saved_at: datetime | None
                    ) -> SavedMeeting:
        key = MeetingLayout(self.prefix, guild_id, meeting_id).final_manifest_key

        def read() -> tuple[object, datetime]:
            doc = self.store.get_json(key)  # NotFoundError when absent
            if saved_at is not None:
                return doc, saved_at
            listed = [t for k, t in self.store.list_objects(key) if k == key]
            if not listed:
                raise NotFoundError(key)
            return doc, listed[0]

        doc, when = await asyncio.to_thread(read)
        try:
            manifest = FinalManifest.model_validate(doc)
        except ValidationError as err:
            raise InvalidInputError(f"{key}: not a promotion manifest") from err
        return SavedMeeting(guild_id, meeting_id, when, manifest)

    async def live(self, guild_id: str, meeting_id: str) -> LiveManifest | None:
        """The audio so far of live meeting `meeting_id` of `guild_id` (its
        `live/manifest.json`), None when there is none yet (or not a manifest). Raises
        TemporaryFailure (S3 away)."""
        if not re.match(MEETING_ID_PATTERN, meeting_id or ""):
            return None
        key = MeetingLayout(self.prefix, guild_id, meeting_id).live_manifest_key
        try:
            doc = await asyncio.to_thread(self.store.get_json, key)
            return LiveManifest.model_validate(doc)
        except (NotFoundError, InvalidInputError, ValidationError):
            return None

    async def live_links(self, manifest: LiveManifest, expires_s: int = LIVE_LINK_S
                         ) -> list[TrackLink]:
        """A link per live track of `manifest` in one format (`one_per_track`; speakers,
        then the mix), each valid `expires_s` seconds from now."""
        def mint() -> list[TrackLink]:
            tracks = one_per_track(manifest.tracks, manifest.meeting_id)
            return [TrackLink(t.user_id, t.kind, self.store.presigned_link(t.key, expires_s),
                              t.bytes, t.sha256, t.duration_ms) for t in tracks]
        return await asyncio.to_thread(mint)

    @staticmethod
    def _not_found(meeting_id: str) -> NotFoundError:
        return NotFoundError(f"no saved recording `{meeting_id[:32]}` in this server")
