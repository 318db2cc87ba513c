"""A live Job's work in proportion to the chunks transcoded since the last one: the live
tracks the last Job wrote (`live/state.json`, `livestate.py`) extended by the new pieces'
frames, with the same bytes a full assembly from chunk 0 gives (`live.py`).

A live track is the ID3v2 tag and the Info frame (`infotag.info_head`: computed from the
frame count and the running music CRC, both in the state), then every frame. Extending it:
the new frames are made from the new pieces alone (`liveframes.write_frames`, from the
state's last piece on); the new head replaces the old one. When the old body is at least
10 MiB, the object is composed server-side (S3 UploadPartCopy with a byte range,
`ObjectStore.compose`) onto its own key: part 1 is the new head and the body's first
5 MiB (uploaded; S3 wants every part but the last to be 5 MiB or more), part 2 the rest
of the old body copied in the store (only while the object has the ETag the state
recorded), part 3 the new frames (uploaded). The uploaded parts go to temporary keys of
this Job's own (`live/parts/<track>.head|tail.<random token>`, each copied only while it
has the ETag its upload returned, deleted after): two live Jobs at once (a deleted Job's
pod still running) never compose or delete each other's parts. A smaller track is
uploaded whole. The key stays the same, so presigned links already handed out keep
working, as before.

What the Job reads: the new pieces (and documents), and of each old track one ranged GET
of its body: the first 5 MiB when the body is at least COMPOSE_MIN_BODY (10 MiB; the
uploaded first part holds them, the rest is copied in the store), else the whole body (a
track that small is uploaded whole again); so at most 10 MiB a track, nothing in
proportion to the session. So the live manifest (`LiveManifest`) has no
sha256 of a live track: SHA-256 cannot be continued past a head that changes, and
hashlib's state cannot be kept between Jobs. Each track carries instead the ETag of the
object this Job wrote (its PUT's or compose's, checked by a stat after the write), which
readers check what they fetch against, with its size (docs/recordings.md, "The audio so
far"). The final tracks, made by promotion, keep their sha256.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from minio.helpers import MIN_PART_SIZE

from voicetrack.audio import Channels, samples_to_ms
from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import LiveManifest, LiveTrack, PieceManifest
from voicetrack.objectstore import ObjectStore
from voicetrack_transcoder.ffmpeg import CONTENT_TYPES
from voicetrack_transcoder.infotag import crc16, info_head
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
from voicetrack_transcoder.livestate import (
    LiveState,
    LiveTrackState,
    file_crc,
    load_state,
    save_state,
)
from voicetrack_transcoder.mp3grid import FRAME, TOTAL_DELAY, silent_frames

log = logging.getLogger(__name__)

COMPOSE_MIN_BODY = 2 * MIN_PART_SIZE
"""The smallest old body (bytes) composed server-side: its first part and the part
copied after it must each be S3's 5 MiB minimum."""


class _Stale(Exception):
    """The state no longer describes a live object (the reason): assemble from chunk 0."""


@dataclass
class _Plan:
    """How one track is written: whole from `path`, or composed (`head` bytes uploaded,
    then `copy` = (offset, length) of the old object, then the new frames at `tail`)."""

    track: LiveTrack
    state: LiveTrackState
    path: Path | None = None
    head: bytes = b""
    copy: tuple[int, int, str] | None = None
    tail: Path | None = None


def extend_live(store: ObjectStore, layout: MeetingLayout, chunks: int | None,
                silent: Collection[int]) -> LiveManifest | str | None:
    """`live.assemble_live` from `live/state.json`: the live manifest once the tracks
    are extended by the pieces after the state's last (unchanged when there are none),
    or the reason (str) the state cannot be extended (then nothing was written; the
    caller assembles from chunk 0). Raises PiecesUnusable as `assemble_live` does;
    TemporaryFailure for S3 failures, and when a live object changed while it was being
    composed (the state is deleted first, so the next Job starts from chunk 0)."""
    loaded = load_state(store, layout)
    if isinstance(loaded, str):
        return loaded
    state, manifest = loaded
    last = state.last_piece
    if chunks is not None and chunks <= last.index:
        return f"{chunks} chunk(s) asked for, the state covers {last.index + 1}"
    new = extend_run(store, layout, last, chunks, silent)
    if not new:
        return manifest
    channels = track_channels(new, {t.track: t.channels for t in state.tracks})
    before = {t.track: t for t in state.tracks}
    bitrate = state.mp3_bitrate
    end = new[-1]
    with tempfile.TemporaryDirectory(prefix="vt-live-") as tmp, \
            ThreadPoolExecutor(8, thread_name_prefix="live") as pool:
        work = Path(tmp)
        silence = silent_frames(bitrate, set(channels.values()), work)
        heads = silent_heads(store, layout, [last, *new], silent, bitrate, channels)
        fetch = piece_fetcher(store)
        plans: list[_Plan] = []
        try:
            for name in track_order(channels):
                frames = work / f"{name}.frames"
                with frames.open("wb") as out:
                    write_frames(out, name, new, heads, silence[channels[name]],
                                 last.end_frame, pool, fetch)
                plans.append(_plan(store, layout, name, channels[name], before.get(name),
                                   frames, silence[channels[name]], last, end, bitrate))
        except _Stale as stale:
            return str(stale)
        store.delete_keys([layout.live_state_key])  # stale from here until rewritten
        for plan in plans:  # only once every track is made: nothing half-replaced
            _write(store, layout, plan)
    manifest = live_manifest(layout, end, [p.track for p in plans])
    store.put_json(layout.live_manifest_key, manifest.to_api())
    save_state(store, layout, LiveState(meeting_id=layout.meeting_id, mp3_bitrate=bitrate,
                                        last_piece=end, tracks=[p.state for p in plans]))
    return manifest


def _plan(store: ObjectStore, layout: MeetingLayout, name: str, channels: Channels,
          old: LiveTrackState | None, frames: Path, silence: bytes, last: PieceManifest,
          end: PieceManifest, bitrate: int) -> _Plan:
    """Track `name` extended by the new `frames` (a local file): its new head and state,
    and how it is written. A track new in this Job (a speaker who joined) is silence
    before them, written whole. Of the old object one ranged GET reads (while it has the
    ETag the state recorded) the body's first MIN_PART_SIZE (5 MiB) bytes when the body
    is at least COMPOSE_MIN_BODY (10 MiB: what the uploaded first part of the compose
    holds), else the whole body (the small object is uploaded whole again). Raises
    _Stale when the old object is not as the state says."""
    n = end.end_frame * FRAME - TOTAL_DELAY
    key = layout.live_key(name, "mp3")
    if old is None:
        block = silence * 1024
        whole, rest = divmod(last.end_frame, 1024)
        crc = 0
        for _ in range(whole):
            crc = crc16(block, crc)
        crc = file_crc(frames, crc16(silence * rest, crc))
        head = info_head(end.end_frame, bitrate, channels, n, crc)
        path = frames.with_suffix(".mp3")
        with path.open("wb") as out:
            out.write(head)
            for chunk in [block] * whole + [silence * rest]:
                out.write(chunk)
            _append(frames, out)
        body = path.stat().st_size - len(head)
        return _Plan(_track(name, channels, key, path.stat().st_size, n),
                     _state(name, channels, key, head, body, end, crc), path=path)
    crc = file_crc(frames, old.music_crc)
    head = info_head(end.end_frame, bitrate, channels, n, crc)
    if len(head) != old.head_bytes or old.key != key:
        raise _Stale(f"{old.key}: head of {old.head_bytes} bytes, {len(head)} now")
    compose = old.body_bytes >= COMPOSE_MIN_BODY
    keep = MIN_PART_SIZE if compose else old.body_bytes
    first = _read_first(store, old, keep)
    body = old.body_bytes + frames.stat().st_size
    track = _track(name, channels, key, len(head) + body, n)
    state = _state(name, channels, key, head, body, end, crc)
    if compose:
        return _Plan(track, state, head=head + first,
                     copy=(old.head_bytes + keep, old.body_bytes - keep, old.etag),
                     tail=frames)
    path = frames.with_suffix(".mp3")
    with path.open("wb") as out:
        out.write(head)
        out.write(first)
        _append(frames, out)
    return _Plan(track, state, path=path)


def _read_first(store: ObjectStore, old: LiveTrackState, keep: int) -> bytes:
    """The first `keep` bytes of `old`'s body, read while its object has the ETag the
    state recorded. Raises _Stale when it is missing, has another ETag or is shorter."""
    first = bytearray()
    if keep:
        try:
            for block in store.iter_range(old.key, old.head_bytes, old.etag,
                                          length=keep):
                first += block
        except (NotFoundError, InvalidInputError) as err:
            raise _Stale(f"{old.key}: {err}") from err
    if len(first) != keep:
        raise _Stale(f"{old.key}: {len(first)} bytes of body read, {keep} wanted")
    return bytes(first)


def _append(src: Path, out: BinaryIO) -> None:
    """Copy the file `src` onto the open binary file `out`."""
    with src.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            out.write(block)


def _track(name: str, channels: Channels, key: str, size: int, n: int) -> LiveTrack:
    """The manifest entry of the extended track (`n` samples; its ETag filled in by
    `_write`)."""
    return live_track(name, channels, key, size, samples_to_ms(n))


def _state(name: str, channels: Channels, key: str, head: bytes, body: int,
           end: PieceManifest, crc: int) -> LiveTrackState:
    """The track's state once written (its ETag filled in by `_write`)."""
    return LiveTrackState(track=name, channels=channels, key=key, etag="",
                          head_bytes=len(head), body_bytes=body, frames=end.end_frame,
                          music_crc=crc)


def _write(store: ObjectStore, layout: MeetingLayout, plan: _Plan) -> None:
    """Write one planned track and record its new ETag in its state. Raises
    TemporaryFailure when the old object changed before it was copied."""
    key = plan.track.key
    mp3 = CONTENT_TYPES["mp3"]
    if plan.path is not None:
        etag = store.put_file(key, str(plan.path), mp3)
    else:
        assert plan.copy is not None and plan.tail is not None
        # this Job's own part keys, each copied only while it has the ETag this Job's put
        # gave it: another live Job (a deleted Job's pod still running) composing the same
        # track neither mixes its parts into ours nor deletes ours
        token = secrets.token_hex(8)
        head_key = layout.live_part_key(plan.track.track, f"head.{token}")
        tail_key = layout.live_part_key(plan.track.track, f"tail.{token}")
        head_path = plan.tail.with_suffix(".head")
        head_path.write_bytes(plan.head)
        try:
            parts: list[tuple[str, int, int, str | None]] = [
                (head_key, 0, len(plan.head), store.put_file(head_key, str(head_path), mp3)),
                (key, *plan.copy)]
            size = plan.tail.stat().st_size
            if size:
                parts.append((tail_key, 0, size, store.put_file(tail_key, str(plan.tail), mp3)))
            etag = store.compose(key, parts, mp3)
        except (NotFoundError, InvalidInputError) as err:
            raise TemporaryFailure(f"{key} changed while the live Job extended it; the "
                                   f"next one assembles from chunk 0: {err}") from err
        finally:
            store.delete_keys([head_key, tail_key])
    size, now = store.stat(key)
    if size != plan.track.bytes or now != etag:  # another writer's object since ours
        raise TemporaryFailure(f"{key}: {size} bytes (ETag {now}) after this Job wrote "
                               f"{plan.track.bytes} (ETag {etag})")
    plan.state.etag = plan.track.etag = etag
