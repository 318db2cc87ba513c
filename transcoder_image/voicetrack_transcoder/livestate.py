"""What the live assembly keeps between its Jobs (`live/state.json`, transcoder-internal):
the chunks the live tracks cover and what extending them needs, so that each live Job
reads and writes only the chunks transcoded since the last one (`liveextend.py`).

The state is trusted only while it agrees with `live/manifest.json`, with the live
objects themselves (their size and ETag, from metadata: nothing is read) and with the
`piece.json` of the last chunk it covers; anything else
(missing, unreadable, another meeting, a track rewritten since) makes `load_state` return
None with the reason, and the caller assembles from chunk 0 (`live.assemble_live`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicetrack.audio import Channels
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import LiveManifest, PieceManifest
from voicetrack.objectstore import ObjectStore
from voicetrack_transcoder.infotag import crc16, frame_bytes

log = logging.getLogger(__name__)

STATE_VERSION = 2
"""2: no sha256 (the live manifest has none since the Jobs stopped reading the old
bodies); a version-1 state is not extended (the next Job assembles from chunk 0)."""


class LiveTrackState(BaseModel):
    """One live track as the last Job wrote it: `key` (ETag `etag`) holds `head_bytes` of
    ID3v2 tag and Info frame, then `frames` audio frames (`body_bytes`), whose
    CRC-16/ARC (the LAME music CRC) is `music_crc`."""

    model_config = ConfigDict(extra="forbid")
    track: str
    channels: Channels
    key: str
    etag: str
    head_bytes: int = Field(gt=0)
    body_bytes: int = Field(ge=0)
    frames: int = Field(ge=0)
    music_crc: int = Field(ge=0, lt=1 << 16)


class LiveState(BaseModel):
    """`live/state.json`: the live tracks cover the pieces up to `last_piece` (its
    `endFrame` frames at `mp3_bitrate` kbit/s), chunks after it not looked at yet."""

    model_config = ConfigDict(extra="forbid")
    version: int = STATE_VERSION
    meeting_id: str
    mp3_bitrate: int
    last_piece: PieceManifest
    tracks: list[LiveTrackState]


def file_crc(path: Path, start: int = 0, part: int = 1 << 20) -> int:
    """CRC-16/ARC of the local file `path`, continued from `start`, read in blocks."""
    crc = start
    with path.open("rb") as f:
        for block in iter(lambda: f.read(part), b""):
            crc = crc16(block, crc)
    return crc


def save_state(store: ObjectStore, layout: MeetingLayout, state: LiveState) -> None:
    """Write `state` at `live/state.json`."""
    store.put_json(layout.live_state_key, state.model_dump(mode="json"))


def load_state(store: ObjectStore, layout: MeetingLayout
               ) -> tuple[LiveState, LiveManifest] | str:
    """The state and the live manifest it describes when they and the live objects agree
    (same tracks, keys, sizes, ETags and channels; each object's size and ETag as recorded; every
    body a whole number of frames) and its last piece is that chunk's `piece.json` (one
    GET); else the reason (str) they cannot be extended.
    Raises TemporaryFailure for S3 failures."""
    try:
        state = LiveState.model_validate(store.get_json(layout.live_state_key))
        manifest = LiveManifest.model_validate(store.get_json(layout.live_manifest_key))
    except NotFoundError as err:
        return f"no state to extend ({err})"
    except (InvalidInputError, ValidationError) as err:
        return f"state or manifest unreadable: {str(err)[:200]}"
    if state.version != STATE_VERSION or state.meeting_id != layout.meeting_id:
        return "state of another version or meeting"
    listed = {t.track: (t.key, t.bytes, t.etag, t.channels) for t in manifest.tracks}
    recorded = {t.track: (t.key, t.head_bytes + t.body_bytes, t.etag, t.channels)
                for t in state.tracks}
    if listed != recorded:
        return "state and manifest disagree on the tracks"
    try:
        size = frame_bytes(state.mp3_bitrate)
    except ValueError:
        return f"state bitrate {state.mp3_bitrate} is not an MP3 one"
    last = state.last_piece
    try:
        piece = PieceManifest.model_validate(
            store.get_json(layout.piece_manifest_key(last.index)))
    except (NotFoundError, InvalidInputError, ValidationError) as err:
        return f"piece.json of the state's last chunk {last.index}: {str(err)[:200]}"
    if piece != last:
        return f"the state's last piece is not chunk {last.index}'s piece.json"
    for t in state.tracks:
        if t.frames != state.last_piece.end_frame or t.body_bytes != t.frames * size:
            return f"track {t.track}: {t.frames} frame(s) in {t.body_bytes} bytes do not " \
                f"match the state's {state.last_piece.end_frame}"
        try:
            have = store.stat(t.key)
        except NotFoundError:
            return f"{t.key} is missing"
        if have != (t.head_bytes + t.body_bytes, t.etag):
            return f"{t.key} changed since the state was written"
    return state, manifest
