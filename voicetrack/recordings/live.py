"""The audio so far of a live meeting: `live/manifest.json` and its tracks, by link.

While a session records, the operator's live Jobs keep `<prefix>/<guild>/<meeting>/live/`
current (one MP3 per speaker and the mix, up to the last transcoded chunk, and a
`FinalManifest` with `assembly: incremental`). The prefix is not in the meetings table, so
it is read from a temp row's raw chunk key (`<prefix>/<guild>/<meeting>/chunks/…`), as
`service.meeting_layout` reads it from a final track's key.

Errors: InvalidInputError when the meeting is not live (its final tracks are what
`links` gives); NotFoundError when it is live but there is no audio so far yet (no chunk
recorded, or none assembled: the live manifest is absent), or TRACK names no live track.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from voicetrack.db.queries import MeetingRecord
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack.objectstore import DEFAULT_LINK_S
from voicetrack.recordings.models import TrackLink
from voicetrack.recordings.service import RecordingsReader


@dataclass(frozen=True)
class LiveAudio:
    """A live meeting's audio so far: its record, `live/manifest.json` (tracks with
    `durationMs`, bytes, sha256) and that manifest's key."""

    record: MeetingRecord
    manifest: FinalManifest
    manifest_key: str

    def as_dict(self) -> dict[str, Any]:
        """`{duration_ms, manifest_key, tracks: [{track, format, key, bytes, sha256,
        duration_ms, channels}]}`."""
        return {"duration_ms": self.manifest.duration_ms, "manifest_key": self.manifest_key,
                "tracks": [{"track": t.track, "format": t.format, "key": t.key,
                            "bytes": t.bytes, "sha256": t.sha256,
                            "duration_ms": t.duration_ms, "channels": t.channels}
                           for t in self.manifest.tracks]}


def layout_from_raw_key(record: MeetingRecord, key: str) -> MeetingLayout:
    """The meeting's key layout from one of its raw chunk keys
    (`<prefix>/<guild>/<meeting>/chunks/<index>/<user>.<ext>`). InvalidInputError when the
    key is not in that layout."""
    tail = f"{record.guild_id}/{record.meeting_id}/chunks/"
    at = key.find(tail)
    if at < 0 or (at > 0 and key[at - 1] != "/"):
        raise InvalidInputError(f"temp row key {key!r} of meeting {record.meeting_id} is "
                                f"not under <prefix>/{tail}")
    return MeetingLayout(key[:at].rstrip("/"), record.guild_id, record.meeting_id)


async def live_audio(reader: RecordingsReader, ref: str) -> LiveAudio:
    """The audio so far of live meeting `ref` (a meeting id or `namespace/session-name`).
    InvalidInputError when it is not live; NotFoundError when there is none yet."""
    record = await reader.resolve(ref)
    if not record.live:
        raise InvalidInputError(
            f"meeting {record.meeting_id} is not live (status {record.status}): its audio "
            "is in the final tracks; leave out --live")
    rows = await reader.db.get_temp_recordings_for_meeting(record.meeting_id)
    keys = [r.pcm_path for r in rows if r.pcm_path]
    if not keys:
        raise NotFoundError(f"meeting {record.meeting_id} is live but has no audio so far "
                            "yet: no chunk has been recorded")
    layout = layout_from_raw_key(record, keys[0])
    store = reader.store
    try:
        doc = await asyncio.to_thread(store.get_json, layout.live_manifest_key)
    except NotFoundError:
        raise NotFoundError(
            f"meeting {record.meeting_id} is live but has no audio so far yet: no chunk "
            f"has been assembled ({layout.live_manifest_key} is absent; the operator "
            "assembles one every VOICETRACK_LIVE_INTERVAL_SECONDS)") from None
    try:
        manifest = FinalManifest.model_validate(doc)
    except ValidationError as err:
        raise InvalidInputError(f"{layout.live_manifest_key}: not a manifest: {err}"
                                ) from err
    return LiveAudio(record, manifest, layout.live_manifest_key)


async def live_links(reader: RecordingsReader, ref: str, track: str | None = None,
                     expires_s: int = DEFAULT_LINK_S) -> tuple[LiveAudio, list[TrackLink]]:
    """Presigned links minted now, valid `expires_s` seconds, to the audio so far of live
    meeting `ref`: every live track, or the one named `track` (a user id or `mix`). Errors
    as `live_audio`, and NotFoundError naming TRACK and the live tracks there are."""
    live = await live_audio(reader, ref)
    tracks = live.manifest.tracks
    if track is not None:
        wanted = MIX_TRACK if track in ("mixed", MIX_TRACK) else track
        tracks = [t for t in tracks if t.track == wanted]
        if not tracks:
            raise NotFoundError(
                f"TRACK: the audio so far of meeting {live.record.meeting_id} has no track "
                f"{track!r}; it has {', '.join(t.track for t in live.manifest.tracks)}")
    store = reader.store
    links = []
    for t in tracks:
        link = await asyncio.to_thread(store.presigned_link, t.key, expires_s)
        links.append(TrackLink(t.track, t.kind, t.user_id, link))
    return live, links
