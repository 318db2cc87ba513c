"""Reading a speaker's raw track from S3 and proving it is what the chunk says it is.

A raw track (DESIGN.md, "Raw chunk format") covers its chunk window `[startMs, endMs)`
exactly: Ogg Opus with pre-skip 0 and one 20 ms packet per slot, or s16le 48 kHz stereo PCM
of `(endMs - startMs) * 48` samples. Anything else is bad input of that chunk
(`ChunkInputError`, an InvalidInputError carrying the chunk's index: exit 2, the index in
the termination message) and the object is left as it is.

Frozen copies (`voicetrack.layout`, "Who writes where"): the recorder's upload grant can
overwrite a chunk's raw track in `chunks/<index>/` after the chunk was transcoded. The
chunk's Job stores the bytes it verified at `MeetingLayout.frozen_raw_key`, outside the
grant, and every read of a chunk's raw audio goes through `load_raw`, which takes that
frozen copy (verified again against the spec's sha256) and reads `chunks/<index>/` only
when there is no frozen copy: a chunk not transcoded yet, or one transcoded before frozen
copies existed (an upgrade between a chunk's transcode and the promotion), or when the
frozen copy fails its check (a store fault; the same sha256 pins the recorder's object).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from voicetrack.audio import (
    CHANNELS,
    FRAME_MS,
    PCM_BYTES_PER_SAMPLE,
    RAW_FORMAT_OGG_OPUS,
    RAW_FORMAT_PCM,
    ms_to_samples,
)
from voicetrack.chunkspec import ChunkSpec, ChunkTrack
from voicetrack.errors import ChunkInputError, InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack.oggopus import OggOpusError, decode_ogg_opus
from voicetrack.opuspacket import is_one_slot

log = logging.getLogger(__name__)


def check_window(start_ms: int, end_ms: int, what: str) -> int:
    """Number of 20 ms slots in `[start_ms, end_ms)`. Raises InvalidInputError when the
    window is empty, reversed or off the 20 ms slot grid of session time."""
    if end_ms <= start_ms:
        raise InvalidInputError(f"{what}: endMs {end_ms} is not after startMs {start_ms}")
    if start_ms % FRAME_MS or end_ms % FRAME_MS:
        raise InvalidInputError(
            f"{what}: [{start_ms}, {end_ms}) is not on the {FRAME_MS} ms slot grid")
    return (end_ms - start_ms) // FRAME_MS


@dataclass
class RawTrack:
    """A validated raw track: its bytes and, for Ogg Opus, its packets (one per slot).
    `frozen`: read from the chunk's frozen copy (`load_raw`), not from `track.key`."""

    track: ChunkTrack
    raw_format: str
    data: bytes
    packets: list[bytes] | None
    slots: int
    frozen: bool = False


def fetch_raw(store: ObjectStore, chunk: ChunkSpec, track: ChunkTrack) -> bytes:
    """The raw object's bytes, at most `track.bytes` of them read. Raises ChunkInputError
    if it is empty or larger than the chunk says (an object overwritten through the
    recorder's grant may be up to `limits.maxBytes`: read whole, it got the promotion
    OOMKilled, exit 137, retried for ever instead of failing on its input), and a plain
    InvalidInputError, naming no chunk, if it is missing: a grant can write but never
    delete, so a done chunk's raw object gone is the store's fault (a lifecycle rule,
    another endpoint), which leaving chunks out one by one would only hide."""
    try:
        data = store.get_bytes(track.key, limit=track.bytes)
    except NotFoundError:
        raise InvalidInputError(
            f"chunk {chunk.index}: raw object {track.key} (user {track.user_id}) is missing",
        ) from None
    except InvalidInputError as err:
        raise ChunkInputError(
            chunk.index, f"chunk {chunk.index}: raw object {track.key} is larger than the "
            f"chunk's {track.bytes} bytes ({err})") from None
    if not data:
        raise ChunkInputError(chunk.index,
                              f"chunk {chunk.index}: raw object {track.key} is empty")
    return data


def validate_raw(chunk: ChunkSpec, track: ChunkTrack, data: bytes, key: str | None = None
                 ) -> RawTrack:
    """Check `data` (read from `key`, default `track.key`: named in errors) against the
    chunk: sha256 equal to `track.sha256`, and a stream that covers the window exactly
    (see the module docstring).

    Raises ChunkInputError naming the chunk, the key and what is wrong (InvalidInputError
    for a window off the slot grid: the chunk's spec, not its raw object)."""
    where = f"chunk {chunk.index}: raw object {key or track.key}"
    slots = check_window(chunk.start_ms, chunk.end_ms, f"chunk {chunk.index}")
    if not data:
        raise ChunkInputError(chunk.index, f"{where} is empty")
    digest = sha256_hex(data)
    if digest != track.sha256:
        raise ChunkInputError(
            chunk.index, f"{where}: sha256 {digest} does not match the chunk's {track.sha256}")
    if chunk.raw_format == RAW_FORMAT_PCM:
        want = ms_to_samples(chunk.duration_ms) * PCM_BYTES_PER_SAMPLE
        if len(data) != want:
            raise ChunkInputError(
                chunk.index, f"{where}: {len(data)} bytes of PCM, the window needs {want}")
        return RawTrack(track, RAW_FORMAT_PCM, data, None, slots)
    if chunk.raw_format != RAW_FORMAT_OGG_OPUS:
        raise ChunkInputError(chunk.index, f"{where}: unknown raw format {chunk.raw_format!r}")
    try:
        stream = decode_ogg_opus(data)
        if stream.channels != CHANNELS:
            raise OggOpusError(f"{stream.channels} channel(s), expected {CHANNELS}")
        if stream.pre_skip != 0:
            raise OggOpusError(f"pre-skip {stream.pre_skip}, expected 0")
        if len(stream.packets) != slots:
            raise OggOpusError(f"{len(stream.packets)} packets for a window of {slots} slots")
        for i, packet in enumerate(stream.packets):
            if not is_one_slot(packet):
                raise OggOpusError(f"packet {i} is not a well-formed 20 ms Opus packet "
                                   "(RFC 6716 §3.4, libopus's opus_packet_parse)")
    except OggOpusError as err:
        raise ChunkInputError(chunk.index,
                              f"{where} is not a valid raw Ogg Opus track: {err}") from None
    return RawTrack(track, RAW_FORMAT_OGG_OPUS, data, stream.packets, slots)


def fetch_frozen(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec,
                 track: ChunkTrack) -> tuple[str, bytes | None]:
    """(key, bytes) of the frozen copy of `track` (`MeetingLayout.frozen_raw_key`), at
    most `track.bytes` read; bytes None when there is none. Raises ChunkInputError when it
    is larger than the chunk says (only a store fault could make it so)."""
    key = layout.frozen_raw_key(chunk.index, track.user_id, chunk.raw_format)
    try:
        return key, store.get_bytes(key, limit=track.bytes)
    except NotFoundError:
        return key, None
    except InvalidInputError as err:
        raise ChunkInputError(
            chunk.index, f"chunk {chunk.index}: frozen raw object {key} is larger than the "
            f"chunk's {track.bytes} bytes ({err})") from None


def load_raw(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec, track: ChunkTrack
             ) -> RawTrack:
    """The validated raw track `track` of `chunk` (a chunk of the meeting at `layout`):
    its frozen copy when there is one (`frozen` set), else the recorder's object at
    `track.key` (`fetch_raw`): a chunk not transcoded yet, or one transcoded before frozen
    copies existed (an upgrade). Either is checked by `validate_raw` against the spec's
    sha256. A frozen copy that fails its check (only a store fault makes one) is logged
    as a warning naming its key and the recorder's object is read instead: the same
    trusted sha256 pins its bytes, so it is as safe, and an intact one saves the chunk.
    Raises the frozen copy's ChunkInputError, naming both objects, when the recorder's
    object fails too (or is missing); otherwise raises as `fetch_raw` and
    `validate_raw`."""
    try:
        frozen = _load_frozen(store, layout, chunk, track)
    except ChunkInputError as frozen_err:
        log.warning("chunk %d: frozen raw copy of user %s is damaged (%s); reading %s "
                    "instead", chunk.index, track.user_id, frozen_err, track.key)
        try:
            return validate_raw(chunk, track, fetch_raw(store, chunk, track))
        except InvalidInputError as raw_err:  # ChunkInputError, or a missing object
            raise ChunkInputError(
                chunk.index, f"{frozen_err}; and the recorder's copy fails too: {raw_err}",
            ) from None
    if frozen is None:
        return validate_raw(chunk, track, fetch_raw(store, chunk, track))
    return frozen


def _load_frozen(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec,
                 track: ChunkTrack) -> RawTrack | None:
    """The validated frozen copy of `track` (`frozen` set), None when there is none.
    Raises ChunkInputError, naming its key, when it is larger than the chunk says or
    fails `validate_raw`."""
    key, data = fetch_frozen(store, layout, chunk, track)
    if data is None:
        return None
    raw = validate_raw(chunk, track, data, key)
    raw.frozen = True
    return raw
