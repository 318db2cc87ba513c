"""The audio so far of a live session: the MP3 pieces made for its chunks while it records
(`pieces.py`), joined from chunk 0 into `live/<track>.mp3` with `live/manifest.json`.

The operator runs it as a live-assembly Job (`voicetrack-transcoder live`) every interval
while the session records; the final tracks are made by promotion, never from these. Each
Job extends what the last one wrote (`liveextend.py`, from `live/state.json`: only the new
chunks are read); this module's full assembly from chunk 0 is what that extension equals
byte for byte, and what runs whenever there is no state to extend.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from voicetrack.audio import samples_to_ms
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import LiveManifest, LiveTrack
from voicetrack.objectstore import ObjectStore
from voicetrack_transcoder.ffmpeg import CONTENT_TYPES
from voicetrack_transcoder.liveextend import extend_live
from voicetrack_transcoder.liveframes import (
    extend_run,
    live_manifest,
    live_track,
    piece_fetcher,
    silent_heads,
    track_channels,
    track_order,
    write_frames,
)
from voicetrack_transcoder.livestate import LiveState, LiveTrackState, file_crc, save_state
from voicetrack_transcoder.mp3grid import FRAME, TOTAL_DELAY, silent_frames, tag_file

log = logging.getLogger(__name__)


def assemble_live(store: ObjectStore, layout: MeetingLayout, chunks: int | None = None,
                  silent: Collection[int] = ()) -> LiveManifest | None:
    """"Audio so far" of a live session: every track up to the last chunk of the unbroken
    run of pieces from chunk 0, at `live/<track>.mp3` with `live/manifest.json` (a
    LiveManifest, `assembly` incremental: each track's size and the ETag of the object
    written, no sha256), replaced on every call.

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

    Pieces are immutable once made, so the live tracks are extended from `live/state.json`
    when it agrees with the live files and covers at most `chunks` (`liveextend.py`: the
    pieces after the state's last are read, the tracks composed server-side); otherwise
    (no state: the first Job, or `live/` emptied; a damaged state or live object) they are
    assembled from chunk 0 here, with the same bytes, and the state written after them.

    The frames are the pieces' as they are (the frames after the last piece's are not made
    yet), so the file ends at the last sample those frames decode
    completely: frame `G - 1` decodes to samples before `G * 1152 - 1105`. Tracks: the
    speakers seen so far and the mix (as the pieces were made); a speaker absent from a
    piece is LAME's silent frame there. Returns None when there is no piece yet. Raises
    PiecesUnusable when pieces disagree (bitrate, channels) or a piece object is missing
    or damaged; TemporaryFailure for S3 or ffmpeg failures.
    """
    extended = extend_live(store, layout, chunks, silent)
    if isinstance(extended, str):
        log.info("live %s assembled from chunk 0: %s", layout.meeting_id, extended)
    else:
        return extended
    return _assemble_full(store, layout, chunks, silent)


def _assemble_full(store: ObjectStore, layout: MeetingLayout, chunks: int | None,
                   silent: Collection[int]) -> LiveManifest | None:
    """`assemble_live` from chunk 0, then `live/state.json` for the next Job."""
    run = extend_run(store, layout, None, chunks, silent)
    if not run or run[-1].end_frame == 0:
        return None
    channels = track_channels(run, {})
    names = track_order(channels)
    n = run[-1].end_frame * FRAME - TOTAL_DELAY
    duration_ms = samples_to_ms(n)
    bitrate = run[0].mp3_bitrate
    tracks: list[LiveTrack] = []
    states: list[LiveTrackState] = []
    built: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="vt-live-") as tmp, \
            ThreadPoolExecutor(8, thread_name_prefix="live") as pool:
        work = Path(tmp)
        silence = silent_frames(bitrate, set(channels.values()), work)
        heads = silent_heads(store, layout, run, silent, bitrate, channels)
        fetch = piece_fetcher(store)
        for name in names:
            frames_path = work / f"{name}.frames"
            with frames_path.open("wb") as out:
                write_frames(out, name, run, heads, silence[channels[name]], 0, pool, fetch)
            path = work / f"{name}.mp3"
            tag_file(frames_path, path, n)
            key = layout.live_key(name, "mp3")
            built.append((key, path))
            body = frames_path.stat().st_size
            tracks.append(live_track(name, channels[name], key, path.stat().st_size,
                                     duration_ms))
            states.append(LiveTrackState(
                track=name, channels=channels[name], key=key, etag="",
                head_bytes=path.stat().st_size - body, body_bytes=body,
                frames=run[-1].end_frame, music_crc=file_crc(frames_path)))
        store.delete_keys([layout.live_state_key])  # stale from here until rewritten
        for (key, path), t, entry in zip(built, states, tracks, strict=True):  # all made
            # the ETag of the object this Job wrote (not a later stat's: another writer's
            # object of the same size would pass the state's checks)
            t.etag = entry.etag = store.put_file(key, str(path), CONTENT_TYPES["mp3"])
    manifest = live_manifest(layout, run[-1], tracks)
    store.put_json(layout.live_manifest_key, manifest.to_api())
    save_state(store, layout, LiveState(meeting_id=layout.meeting_id, mp3_bitrate=bitrate,
                                        last_piece=run[-1], tracks=states))
    return manifest
