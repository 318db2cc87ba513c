"""The audio so far of a live session: the MP3 pieces made for its chunks while it records
(`pieces.py`), joined from chunk 0 into `live/<track>.mp3` with `live/manifest.json`.

The operator runs it as a live-assembly Job (`voicetrack-transcoder live`) every interval
while the session records; the final tracks are made by promotion, never from these.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import tempfile
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import ValidationError

from voicetrack.audio import Channels, samples_to_ms
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalManifest, FinalTrack, PieceManifest, PieceTrack
from voicetrack.objectstore import ObjectStore, sha256_file, sha256_hex
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.assembly import fetched_in_order, prefetch_depth
from voicetrack_transcoder.ffmpeg import CONTENT_TYPES
from voicetrack_transcoder.mp3grid import FRAME, TOTAL_DELAY, silent_frames, split_frames, tag_file
from voicetrack_transcoder.pieces import PiecesUnusable
from voicetrack_transcoder.silenthead import live_head

log = logging.getLogger(__name__)


def _piece(store: ObjectStore, layout: MeetingLayout, index: int) -> PieceManifest | None:
    """Chunk `index`'s `piece.json`, None when it is missing or unreadable."""
    try:
        return PieceManifest.model_validate(store.get_json(layout.piece_manifest_key(index)))
    except (NotFoundError, InvalidInputError, ValidationError):
        return None


def assemble_live(store: ObjectStore, layout: MeetingLayout, chunks: int | None = None,
                  silent: Collection[int] = ()) -> FinalManifest | None:
    """"Audio so far" of a live session: every track up to the last chunk of the unbroken
    run of pieces from chunk 0, at `live/<track>.mp3` with `live/manifest.json` (a
    FinalManifest, `assembly` incremental), replaced on every call.

    `chunks` (the operator's live Job passes it): assemble exactly chunks `[0, chunks)`,
    which it saw transcoded; a run of pieces shorter than that raises PiecesUnusable
    naming the first chunk without a usable piece. `silent`: indexes of chunks that have
    no piece and never will (failed, or nobody spoke): their units are silence, as
    promotion makes them (LAME's silent frame for every frame between the pieces around
    them, after the head of a window nobody spoke in right after speech that the spoken
    chunk's Job stored: `silenthead.live_head`; so the audio so far is the
    final track's frames). Every track is built and checked in a temporary directory
    before anything is uploaded, and the manifest goes last, so a missing or damaged
    piece leaves the previous live files as they were.

    The run ends at the first chunk not in `silent` without a piece (not transcoded yet)
    or whose unit does not start where the previous one ended (after a silent chunk: not
    before). With `chunks`, a chunk without a piece that a later chunk of the `chunks` has
    one after is silence too: its piece was never made (its build is an optimisation the
    transcoder skips on an error) and never will be, and stopping there froze the audio so
    far for the rest of the session (third review, fault 7).

    The frames are the pieces' as they are (the frames after the last piece's are not made
    yet), so the file ends at the last sample those frames decode
    completely: frame `G - 1` decodes to samples before `G * 1152 - 1105`. Tracks: the
    speakers seen so far and the mix (as the pieces were made); a speaker absent from a
    piece is LAME's silent frame there. Returns None when there is no piece yet. Raises
    PiecesUnusable when pieces disagree (bitrate, channels) or a piece object is missing
    or damaged; TemporaryFailure for S3 or ffmpeg failures.
    """
    run: list[PieceManifest] = []
    piece_of = functools.cache(lambda i: _piece(store, layout, i))  # each read once
    index = 0
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
        end_ms, end_frame = (run[-1].unit_end_ms, run[-1].end_frame) if run else (0, 0)
        if index > (run[-1].index + 1 if run else 0):  # silent chunks before it
            joins = piece.unit_start_ms >= end_ms and piece.first_frame >= end_frame
        else:
            joins = not run or (piece.unit_start_ms == end_ms
                                and piece.first_frame == end_frame)
        if not joins or (run and piece.mp3_bitrate != run[0].mp3_bitrate):
            break
        run.append(piece)
        index += 1
    if chunks is not None and index < chunks:
        raise PiecesUnusable(f"chunk {index} has no usable piece ({index} of the "
                             f"{chunks} chunk(s) asked for)")
    if not run or run[-1].end_frame == 0:
        return None
    channels: dict[str, Channels] = {}
    for piece in run:
        for t in piece.tracks:
            if channels.setdefault(t.track, t.channels) != t.channels:
                raise PiecesUnusable(f"chunk {piece.index}: track {t.track} changes from "
                                     f"{channels[t.track]} to {t.channels} channel(s)")
    names = sorted(n for n in channels if n != MIX_TRACK) + (
        [MIX_TRACK] if MIX_TRACK in channels else [])
    frames_total = run[-1].end_frame
    n = frames_total * FRAME - TOTAL_DELAY
    duration_ms = samples_to_ms(n)
    bitrate = run[0].mp3_bitrate
    tracks: list[FinalTrack] = []
    built: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="vt-live-") as tmp, \
            ThreadPoolExecutor(8, thread_name_prefix="live") as pool:
        work = Path(tmp)
        silence = silent_frames(bitrate, set(channels.values()), work)

        def fetch(t: PieceTrack) -> bytes:
            try:
                data = store.get_bytes(t.key)
            except NotFoundError:
                raise PiecesUnusable(f"{t.key} is missing") from None
            if len(data) != t.bytes or sha256_hex(data) != t.sha256 \
                    or t.frames != len(split_frames(data)):
                raise PiecesUnusable(f"{t.key} does not match its piece.json")
            return data

        heads = {after.index: live_head(store, layout, before, after, bitrate,
                                        channels)  # by the index of the piece after it
                 for before, after in itertools.pairwise(run)
                 if before.index + 1 in silent and after.index > before.index + 1}
        for name in names:
            frames_path = work / f"{name}.frames"
            mine = [next((t for t in p.tracks if t.track == name), None) for p in run]
            have = [m for m in mine if m is not None]
            blobs = fetched_in_order(pool, have, fetch, prefetch_depth(
                max((m.bytes for m in have), default=1), 1))
            with frames_path.open("wb") as out, contextlib.closing(blobs):
                written = 0
                for piece, own in zip(run, mine, strict=True):
                    head = heads.get(piece.index)
                    if head is not None:  # a silent unit's head, as the final track has it
                        first, count, by_track = head
                        out.write(silence[channels[name]] * (first - written))
                        out.write(by_track.get(name, silence[channels[name]] * count))
                        written = first + count
                    out.write(silence[channels[name]] * (piece.first_frame - written))
                    written = piece.end_frame
                    out.write(next(blobs) if own is not None
                              else silence[channels[name]]
                              * (piece.end_frame - piece.first_frame))
            path = work / f"{name}.mp3"
            tag_file(frames_path, path, n)
            key = layout.live_key(name, "mp3")
            built.append((key, path))
            tracks.append(FinalTrack(
                track=name, kind="mixed" if name == MIX_TRACK else "speaker",
                user_id=None if name == MIX_TRACK else name, format="mp3", key=key,
                channels=channels[name], bytes=path.stat().st_size,
                sha256=sha256_file(path), duration_ms=duration_ms))
        for key, path in built:  # only once every track is made: nothing half-replaced
            store.put_file(key, str(path), CONTENT_TYPES["mp3"])
    manifest = FinalManifest(
        tool_version=TOOL_VERSION, meeting_id=layout.meeting_id, duration_ms=duration_ms,
        recorded_ms=duration_ms, paused_ms=run[-1].paused_ms, tracks=tracks,
        assembly="incremental")
    store.put_json(layout.live_manifest_key, manifest.to_api())
    return manifest
