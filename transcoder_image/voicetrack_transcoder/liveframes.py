"""The pieces of the audio so far and their frames, for both ways `live.assemble_live`
makes the live tracks: from chunk 0 (`live.py`) and extending the last Job's
(`liveextend.py`), so that the two give the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from pydantic import ValidationError

from voicetrack.audio import Channels, samples_to_ms
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import LiveManifest, LiveTrack, PieceManifest, PieceTrack
from voicetrack.objectstore import ObjectStore
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.assembly import fetched_in_order, prefetch_depth
from voicetrack_transcoder.mp3grid import FRAME, TOTAL_DELAY, split_frames
from voicetrack_transcoder.pieces import PiecesUnusable, checked_bytes
from voicetrack_transcoder.silenthead import live_head

log = logging.getLogger(__name__)

Heads = dict[int, tuple[int, int, dict[str, bytes]] | None]
"""Silent units' heads by the index of the piece after them (`silenthead.live_head`)."""


def _piece(store: ObjectStore, layout: MeetingLayout, index: int) -> PieceManifest | None:
    """Chunk `index`'s `piece.json`, None when it is missing or unreadable."""
    try:
        return PieceManifest.model_validate(store.get_json(layout.piece_manifest_key(index)))
    except (NotFoundError, InvalidInputError, ValidationError):
        return None


def extend_run(store: ObjectStore, layout: MeetingLayout, last: PieceManifest | None,
               chunks: int | None, silent: Collection[int]) -> list[PieceManifest]:
    """The pieces that continue the run ending at piece `last` (None: from chunk 0), in
    order, as `assemble_live` says; [] when none does. Raises PiecesUnusable when the
    run ends before `chunks`."""
    run: list[PieceManifest] = []
    piece_of = functools.cache(lambda i: _piece(store, layout, i))  # each read once
    index = last.index + 1 if last is not None else 0
    while chunks is None or index < chunks:
        if index in silent:
            index += 1
            continue
        piece = piece_of(index)
        if piece is None:
            if chunks is not None and any(
                    piece_of(later) is not None
                    for later in range(index + 1, chunks) if later not in silent):
                log.warning("chunk %d of %s has no piece though later ones do: silence in "
                            "the audio so far", index, layout.meeting_id)
                index += 1  # its piece will never come (the build was skipped)
                continue
            break
        prev = run[-1] if run else last
        end_ms, end_frame = (prev.unit_end_ms, prev.end_frame) if prev else (0, 0)
        if index > (prev.index + 1 if prev else 0):  # silent chunks before it
            joins = piece.unit_start_ms >= end_ms and piece.first_frame >= end_frame
        else:
            joins = prev is None or (piece.unit_start_ms == end_ms
                                     and piece.first_frame == end_frame)
        if not joins or (prev and piece.mp3_bitrate != prev.mp3_bitrate):
            break
        run.append(piece)
        index += 1
    if chunks is not None and index < chunks:
        raise PiecesUnusable(f"chunk {index} has no usable piece ({index} of the "
                             f"{chunks} chunk(s) asked for)")
    return run


def track_channels(run: list[PieceManifest], channels: dict[str, Channels]
                   ) -> dict[str, Channels]:
    """`channels` (by track) with the tracks of `run` added. Raises PiecesUnusable when a
    track's channel count changes."""
    out = dict(channels)
    for piece in run:
        for t in piece.tracks:
            if out.setdefault(t.track, t.channels) != t.channels:
                raise PiecesUnusable(f"chunk {piece.index}: track {t.track} changes from "
                                     f"{out[t.track]} to {t.channels} channel(s)")
    return out


def track_order(channels: Collection[str]) -> list[str]:
    """Speakers sorted, then the mix."""
    return sorted(n for n in channels if n != MIX_TRACK) + (
        [MIX_TRACK] if MIX_TRACK in channels else [])


def silent_heads(store: ObjectStore, layout: MeetingLayout, pieces: list[PieceManifest],
                 silent: Collection[int], bitrate: int, channels: dict[str, Channels]
                 ) -> Heads:
    """The heads of the silent units between consecutive `pieces`, by the later one's
    index."""
    return {after.index: live_head(store, layout, before, after, bitrate, channels)
            for before, after in itertools.pairwise(pieces)
            if before.index + 1 in silent and after.index > before.index + 1}


def piece_fetcher(store: ObjectStore) -> Callable[[PieceTrack], bytes]:
    """Reads a piece track's frames, checked against its piece.json (PiecesUnusable)."""
    def fetch(t: PieceTrack) -> bytes:
        data = checked_bytes(store, t.key, t.bytes, t.sha256)
        if t.frames != len(split_frames(data)):
            raise PiecesUnusable(f"{t.key}: {len(split_frames(data))} frames but piece.json "
                                 f"says {t.frames}")
        return data
    return fetch


def write_frames(out: BinaryIO, name: str, pieces: list[PieceManifest], heads: Heads,
                 silence: bytes, written: int, pool: ThreadPoolExecutor,
                 fetch: Callable[[PieceTrack], bytes]) -> None:
    """Write track `name`'s frames from frame `written` to the last of `pieces`' end:
    each piece's own (fetched ahead in `pool`), `silence` (one silent frame) where the
    track has none, and the silent units' heads."""
    mine = [next((t for t in p.tracks if t.track == name), None) for p in pieces]
    have = [m for m in mine if m is not None]
    blobs = fetched_in_order(pool, have, fetch, prefetch_depth(
        max((m.bytes for m in have), default=1), 1))
    with contextlib.closing(blobs):
        for piece, own in zip(pieces, mine, strict=True):
            head = heads.get(piece.index)
            if head is not None:  # a silent unit's head, as the final track has it
                first, count, by_track = head
                out.write(silence * (first - written))
                out.write(by_track.get(name, silence * count))
                written = first + count
            out.write(silence * (piece.first_frame - written))
            written = piece.end_frame
            out.write(next(blobs) if own is not None
                      else silence * (piece.end_frame - piece.first_frame))


def live_manifest(layout: MeetingLayout, last: PieceManifest, tracks: list[LiveTrack]
                  ) -> LiveManifest:
    """The live manifest of `tracks` up to piece `last`."""
    duration_ms = samples_to_ms(last.end_frame * FRAME - TOTAL_DELAY)
    return LiveManifest(
        tool_version=TOOL_VERSION, meeting_id=layout.meeting_id, duration_ms=duration_ms,
        recorded_ms=duration_ms, paused_ms=last.paused_ms, tracks=tracks,
        assembly="incremental")


def live_track(name: str, channels: Channels, key: str, size: int, duration_ms: int,
               etag: str | None = None) -> LiveTrack:
    """The manifest entry of live track `name`, `size` bytes at `key`; `etag` is the
    object's once written (set before the manifest is)."""
    return LiveTrack(
        track=name, kind="mixed" if name == MIX_TRACK else "speaker",
        user_id=None if name == MIX_TRACK else name, format="mp3", key=key,
        channels=channels, bytes=size, duration_ms=duration_ms, etag=etag)
