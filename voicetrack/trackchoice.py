"""Which final track files a link answer names: one per track, in one format.

The one home of that rule for every reader of final tracks: the `voicetrack recordings`
CLI (`TrackInfo` rows from SQL) and the bot (`FinalTrack` entries of a final manifest).
A meeting's final tracks are each stored in every format its `spec.output.formats` asked
for (`voicetrack.resources.OutputFormat`: mp3, flac, opus); a link answer gives one file
per track, so that answers stay small (a presigned URL is some 400 characters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from voicetrack.errors import NotFoundError
from voicetrack.layout import MIX_TRACK

DEFAULT_LINK_FORMAT = "mp3"
"""The format picked when none is asked and a track has it; else the track's first."""


class NamedTrack(Protocol):
    """A final track file: its track name (a speaker's user id, or `mix`) and format."""

    @property
    def track(self) -> str: ...  # pragma: no cover - protocol

    @property
    def format(self) -> str: ...  # pragma: no cover - protocol


T = TypeVar("T", bound=NamedTrack)


def select_tracks(tracks: Sequence[T], track: str | None, fmt: str | None,
                  meeting_id: str, *, track_option: str = "TRACK",
                  format_option: str = "--format") -> list[T]:
    """One file per track name, in the order the names first appear in `tracks`: all
    tracks, or only the one named `track` (a user id, or `mix`/`mixed` for the mix); in
    format `fmt` (case-insensitive), or by default DEFAULT_LINK_FORMAT when the track has
    it, else its first format.

    Raises NotFoundError when `tracks` is empty, when no track is named `track`, or when
    a chosen track lacks `fmt`; the message starts with the option at fault
    (`track_option`, `format_option`: how the asker typed it) and lists what exists."""
    if not tracks:
        raise NotFoundError(f"meeting {meeting_id} has no final tracks")
    names = list(dict.fromkeys(t.track for t in tracks))
    if track is not None:
        wanted = MIX_TRACK if track in ("mixed", MIX_TRACK) else track
        if wanted not in names:
            raise NotFoundError(
                f"{track_option}: meeting {meeting_id} has no track {track!r}; it has "
                f"{', '.join(names)}")
        names = [wanted]
    out = []
    for name in names:
        mine = [t for t in tracks if t.track == name]
        if fmt is not None:
            match = [t for t in mine if t.format == fmt.lower()]
            if not match:
                raise NotFoundError(
                    f"{format_option}: track {name} has no {fmt!r}; it has "
                    f"{', '.join(t.format for t in mine)}")
        else:
            match = [t for t in mine if t.format == DEFAULT_LINK_FORMAT] or mine
        out.append(match[0])
    return out
