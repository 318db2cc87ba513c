"""The data the recordings read layer (`voicetrack.recordings.service`) answers with: a
meeting's tracks (`TrackInfo`), the meeting with its final manifest, speech timeline and
consent record (`MeetingDetail`), links, downloaded files, the Audacity zip (`Bundle`), and
`ChecksumMismatch` for damaged objects. Plain frozen dataclasses with JSON-ready `as_dict`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from voicetrack.db.queries import MeetingRecord
from voicetrack.db.schema import Recording
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MIX_TRACK
from voicetrack.manifests import ConsentRecord, FinalManifest
from voicetrack.objectstore import PresignedUrl

RENDER_SOURCE_ORDER = ("flac", "opus", "mp3")
"""Which final format a bundle's FLAC is rendered from, best first (lossless, then the
format with the least generation loss); any other format comes last."""

@dataclass(frozen=True)
class TrackInfo:
    """One final track in one format, from its `recordings` row (`channels` from the
    final manifest when it was read). `bytes` and `sha256` are of the object in S3;
    `duration_ms` its length (ms)."""

    recording_id: str
    kind: str
    user_id: str | None
    format: str
    key: str
    filename: str
    bytes: int | None
    sha256: str | None
    duration_ms: int | None
    channels: int | None = None

    @property
    def track(self) -> str:
        """The track's name: the speaker's user id, or `mix`."""
        return self.user_id or MIX_TRACK

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"track": self.track, "kind": self.kind, "user_id": self.user_id,
                "format": self.format, "key": self.key, "filename": self.filename,
                "bytes": self.bytes, "sha256": self.sha256, "duration_ms": self.duration_ms,
                "channels": self.channels, "recording_id": self.recording_id}

    @classmethod
    def from_row(cls, row: Recording, channels: int | None = None) -> TrackInfo:
        """The track of a `recordings` row that has an object key."""
        assert row.object_key is not None
        fmt = row.format or posixpath.splitext(row.filename)[1].lstrip(".").lower()
        return cls(recording_id=row.id, kind=row.kind, user_id=row.user_id, format=fmt,
                   key=row.object_key, filename=posixpath.basename(row.object_key),
                   bytes=row.bytes, sha256=row.sha256, duration_ms=row.duration_in_ms,
                   channels=channels)


@dataclass(frozen=True)
class MeetingDetail:
    """A meeting with its final tracks (speakers by user id, then the mix), its final
    manifest (None before promotion, or when the object is missing), the keys of the
    manifest and the speech timeline (None when absent), and the consent record
    (`final/consent.json`: who was recorded, who opted out; None when promotion wrote
    none, as before consent existed) with its key."""

    record: MeetingRecord
    tracks: tuple[TrackInfo, ...]
    manifest: FinalManifest | None
    manifest_key: str | None
    timeline_key: str | None
    consent: ConsentRecord | None = None
    consent_key: str | None = None

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """A JSON-ready dict: the record's fields, `tracks`, from the manifest
        `output_ms`, `recorded_ms`, `paused_ms` and `gaps` (`{start_ms, end_ms, cause}`),
        and `consent` (`{recorded: [{user_id, first_ms}], opted_out: [{user_id, since_ms,
        via, excluded}], degraded: {reason, message, since_ms, until_ms} | None}`, output
        ms; None when promotion wrote no consent record). The record's `consent_degraded`
        (`{reason, message}` from SQL, None when consent ran as asked) is the history's."""
        c = self.consent
        m = self.manifest
        return {
            **self.record.as_dict(now),
            "tracks": [t.as_dict() for t in self.tracks],
            "output_ms": m.duration_ms if m else None,
            "recorded_ms": m.recorded_ms if m else None,
            "paused_ms": m.paused_ms if m else None,
            "gaps": [{"start_ms": g.start_ms, "end_ms": g.end_ms, "cause": g.cause}
                     for g in m.gaps] if m else [],
            "manifest_key": self.manifest_key,
            "timeline_key": self.timeline_key,
            "consent": {
                "recorded": [{"user_id": r.user_id, "first_ms": r.first_ms}
                             for r in c.recorded],
                "opted_out": [{"user_id": o.user_id, "since_ms": o.since_ms, "via": o.via,
                               "excluded": o.excluded} for o in c.opted_out],
                "degraded": {"reason": c.consent_degraded.reason,
                             "message": c.consent_degraded.message,
                             "since_ms": c.consent_degraded.since_ms,
                             "until_ms": c.consent_degraded.until_ms}
                if c.consent_degraded else None,
            } if c else None,
            "consent_key": self.consent_key,
        }


@dataclass(frozen=True)
class TrackLink:
    """A presigned link to one track in one format."""

    track: str
    kind: str
    user_id: str | None
    link: PresignedUrl

    def as_dict(self) -> dict[str, Any]:
        """`{url, expires_in_seconds, format}` (`PresignedUrl.as_dict`)."""
        return self.link.as_dict()


@dataclass(frozen=True)
class DownloadedFile:
    """A track saved at `path`: its sha256 (hex), whether it matched the row's
    (`verified`; False only for old rows without a sha256), and whether a matching file
    was already there (`reused`, nothing downloaded)."""

    track: TrackInfo
    path: Path
    sha256: str
    verified: bool
    reused: bool


@dataclass(frozen=True)
class Bundle:
    """The Audacity zip at `path`: its member names (under one folder), and the length
    of every FLAC in it (`samples` per channel at 48 kHz, `duration_ms`)."""

    path: Path
    members: tuple[str, ...]
    samples: int
    duration_ms: int


class ChecksumMismatch(InvalidInputError):
    """Downloaded bytes differ from what the `recordings` row says (size or sha256): the
    object in S3 is damaged or was replaced. `files` names each one."""

    def __init__(self, message: str, files: Sequence[str]) -> None:
        super().__init__(message)
        self.files = list(files)


def render_sources(tracks: Sequence[TrackInfo]) -> list[TrackInfo]:
    """Per track name (speakers in the given order, then the mix), the format a bundle
    renders from (`RENDER_SOURCE_ORDER`)."""
    def rank(t: TrackInfo) -> int:
        fmt = "opus" if t.format == "ogg" else t.format
        return RENDER_SOURCE_ORDER.index(fmt) if fmt in RENDER_SOURCE_ORDER \
            else len(RENDER_SOURCE_ORDER)

    names = list(dict.fromkeys(t.track for t in tracks))
    names.sort(key=lambda n: n == MIX_TRACK)
    return [min((t for t in tracks if t.track == n), key=rank) for n in names]
