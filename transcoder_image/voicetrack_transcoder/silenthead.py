"""The heads of silent units, made while recording (issue 13: stop -> final in seconds).

A unit of digital silence right after speech (a window nobody spoke in, a failed chunk's
gap, the time up to stop) has no piece (`pieces.py`): assembly renders its first
`silence.HEAD_MS` from the speech before it, for the encoder's and decoders' tails, and
repeats LAME's silent frame after (`silence.py`). At 1 h x 5 speakers with a silent window
in six, those renders were most of what remained after stop.

So every spoken chunk's own transcoder Job, which runs while the session records, makes
the head of the silence that may follow it (`build_head_after`), before anyone knows what
follows: the head depends only on the chunks before the unit and on nothing with tracks
following within `HEAD_MS` (`silence.head_plan`, the one home of the rule, then `render`
and `silence.settled_head`), not on where the unit ends. It is stored in the chunk's
outputs folder (`outputs/<k>/head-after.json`, `SilentHeadManifest`, frames in base64). A
session that ends in silence thus has its last unit's head too (no later Job exists to make it),
and so do a silence after a spoken chunk of any length, after a failed chunk's gap, and
after any number of silent windows. When speech follows after all, the head is unused.

Assembly (`stored_head`) uses a stored head only when it is the head the plan asks for:
after the same chunk, same unit start, render start, head end and frames, the same chunks
decoded at the same places from the same raw tracks (`placed`), no chunk with tracks in
the unit, the plan's bitrate and channel counts, every track it needs, the bytes matching
their sha256 and whole frames, no excluded member's audio (consent). Any other head, or
none, and assembly computes the unit as before (the fallback).
"""

from __future__ import annotations

import base64
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from voicetrack.audio import Channels, ms_to_samples
from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import (
    PieceManifest,
    PlacedSource,
    SilentHeadManifest,
    SilentHeadTrack,
)
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.context import paused_before, prev_spec
from voicetrack_transcoder.mp3grid import owned_end, silent_frames, split_frames
from voicetrack_transcoder.pieces import (
    Made,
    Placed,
    Work,
    chunk_sources,
    render,
)
from voicetrack_transcoder.silence import (
    HEAD_MS,
    HeadPlan,
    extend_head,
    head_plan,
    reach_ms,
    settled_head,
)
from voicetrack_transcoder.waveform import SAMPLES_PER_PIXEL

log = logging.getLogger(__name__)

MAX_LOOK_BACK = 8
"""Chunks before the spoken one a Job reads (one spec each, `context.prev_spec`) to place
every chunk a head's render decodes (`silence.reach_ms`: ~1.1 s before the unit): none for a
chunk longer than that, the usual case; past this many, no head (assembly computes it)."""


def placed_before(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec,
                  piece: PieceManifest, reach: int) -> list[Placed] | None:
    """`chunk` (whose piece is `piece`) and the chunks before it that end after output
    ms `reach`, placed in output time as the plan places them when none of them failed
    (paused gaps cut), in order; None when a spec is missing, the chunk before `chunk`
    is needed but its raw tracks were bad (`piece.prev_used`), or more than
    `MAX_LOOK_BACK` are needed. Reads one spec (`context.prev_spec`: the frozen one
    first, refused unless it fits) per chunk before `chunk` placed or checked."""
    placed = [Placed(chunk, piece.unit_end_ms - chunk.duration_ms)]
    for looked in range(MAX_LOOK_BACK + 1):
        later = placed[0]
        if later.out_start_ms <= reach or later.chunk.index == 0:
            return placed
        if looked == MAX_LOOK_BACK or (looked == 0 and not piece.prev_used):
            return None
        spec = prev_spec(store, layout, later.chunk)
        if spec is None:
            return None
        cut = paused_before(later.chunk, spec)
        out_end = later.out_start_ms - (later.chunk.start_ms - spec.end_ms - cut)
        if out_end <= reach:
            return placed
        placed.insert(0, Placed(spec, out_end - spec.duration_ms))
    return None


def build_head_after(store: ObjectStore, chunk: ChunkSpec, piece: PieceManifest,
                     prefix: str, mp3_bitrate: int, tracks: str = "both"
                     ) -> SilentHeadManifest | None:
    """In spoken chunk `chunk`'s Job, right after its piece `piece`: make and store the
    head of a silent unit right after it (see the module docstring), as assembly would
    make it for any silent unit longer than the head. Returns None (nothing written) when
    the chunks before it cannot be placed (`placed_before`) or the head does not settle
    (assembly then renders the unit whole). Raises InvalidInputError for a bad raw track,
    TemporaryFailure for S3 or ffmpeg failures."""
    layout = MeetingLayout(prefix, chunk.guild_id, chunk.meeting_id)
    unit_start = piece.unit_end_ms
    unit_end = unit_start + 2 * HEAD_MS  # any unit the head is used in: the same head
    w = Work(owned_end(ms_to_samples(unit_start)), owned_end(ms_to_samples(unit_end)),
             unit_start, unit_end)
    placed = placed_before(store, layout, chunk, piece, reach_ms(w))
    hp = head_plan(w, placed) if placed is not None else None
    if hp is None:
        return None
    speakers = sorted({t.user_id for p in hp.placed for t in p.chunk.tracks})
    channels: dict[str, Channels] = {
        u: max(t.channels for p in hp.placed for t in p.chunk.tracks if t.user_id == u)
        for u in speakers}
    mix_channels: Channels = 2 if piece.stereo_seen else 1
    names = (speakers if tracks in ("perSpeaker", "both") else []) + (
        [MIX_TRACK] if tracks in ("mixed", "both") else [])
    track_channels = {**channels, MIX_TRACK: mix_channels}
    with tempfile.TemporaryDirectory(prefix="vt-head-") as tmp, \
            ThreadPoolExecutor(1, thread_name_prefix="head-silence") as pool:
        (Path(tmp) / "silence").mkdir()  # its ffmpeg run overlaps the render's decoding
        frames = pool.submit(silent_frames, mp3_bitrate, {track_channels[n] for n in names},
                             Path(tmp) / "silence")
        rendered = render(store, layout, hp.placed, hp.from_ms, hp.head_ms, speakers,
                          channels, mix_channels if MIX_TRACK in names else None)
        rendered.wanted = set(names)
        silence = frames.result()
        head = settled_head(rendered, w, hp.head_ms, mp3_bitrate, Path(tmp), speakers,
                            {n: silence[track_channels[n]] for n in names})
    if head is None:
        log.info("chunk %d: the head of the silence after it does not settle", chunk.index)
        return None
    head_tracks = []
    for name in names:
        data = b"".join(head.frames[name])
        mins, maxs = head.peaks[name]
        pairs = np.empty(mins.size * 2, dtype=np.int64)
        pairs[0::2], pairs[1::2] = mins, maxs
        head_tracks.append(SilentHeadTrack(
            track=name, channels=track_channels[name], frames=len(head.frames[name]),
            sha256=sha256_hex(data), mp3=base64.b64encode(data).decode(),
            peaks=pairs.tolist()))
    manifest = SilentHeadManifest(
        tool_version=TOOL_VERSION, index=chunk.index, mp3_bitrate=mp3_bitrate,
        unit_start_ms=unit_start, from_ms=hp.from_ms, head_ms=hp.head_ms,
        first_frame=w.first, head_end_frame=owned_end(ms_to_samples(hp.head_ms)),
        placed=placed_sources(hp.placed), tracks=head_tracks,
        speech={u: r for u, r in head.speech.items() if r})
    store.put_json(layout.head_after_key(chunk.index), manifest.to_api())
    return manifest


def placed_sources(placed: list[Placed]) -> list[PlacedSource]:
    """Chunks a head's render decodes, as a SilentHeadManifest records them."""
    return [PlacedSource(index=p.chunk.index, out_start_ms=p.out_start_ms,
                         out_end_ms=p.out_end_ms, sources=chunk_sources(p.chunk))
            for p in placed]


def stored_head(store: ObjectStore, layout: MeetingLayout, w: Work, hp: HeadPlan,
                mp3_bitrate: int, track_channels: dict[str, Channels], names: list[str],
                silence: dict[int, bytes], excluded: set[str]) -> Made | None:
    """What `make` gives for unit `w` (whose head assembly would make by `hp`) from the
    head the Job of the chunk right before the unit stored, checked as the module
    docstring says and extended with LAME's silent frame (`silence`, by channel count) to
    `w.end`; None when the unit does not start right after a chunk with tracks, there is
    no such head or it does not verify (the reason is logged). Raises TemporaryFailure
    for S3 failures."""
    before = [p for p in hp.placed if p.out_start_ms < w.unit_start_ms]
    if not before or before[-1].out_end_ms != w.unit_start_ms or not before[-1].chunk.tracks:
        return None
    key = layout.head_after_key(before[-1].chunk.index)
    try:
        head = SilentHeadManifest.model_validate(store.get_json(key))
    except NotFoundError:
        return None
    except (InvalidInputError, ValidationError) as err:
        log.warning("%s unreadable, the unit is computed: %s", key, err)
        return None
    reason = _mismatch(head, before, w, hp, mp3_bitrate, track_channels, names, excluded)
    if reason is not None:
        log.warning("%s not used, the unit is computed: %s", key, reason)
        return None
    count = head.head_end_frame - head.first_frame
    pixels = -(-ms_to_samples(hp.head_ms - w.unit_start_ms) // SAMPLES_PER_PIXEL)
    have = {t.track: t for t in head.tracks}
    made = Made({}, {}, {u: list(r) for u, r in head.speech.items()})
    for name in names:
        t = have.get(name)
        if t is None:  # nobody in it spoke near the unit: digital silence throughout
            made.frames[name] = [silence[track_channels[name]]] * count
            zeros = np.zeros(pixels, np.int8)
            made.peaks[name] = (zeros, zeros)
            continue
        try:
            data = base64.b64decode(t.mp3, validate=True)
            frames = split_frames(data)
        except ValueError as err:  # binascii.Error is a ValueError
            log.warning("%s not used, the unit is computed: track %s: %s", key, name, err)
            return None
        pk = np.asarray(t.peaks, dtype=np.int8)
        if sha256_hex(data) != t.sha256 or len(frames) != count or t.frames != count \
                or pk.size != 2 * pixels:
            log.warning("%s not used, the unit is computed: track %s does not match its "
                        "sha256, frames or peaks", key, name)
            return None
        made.frames[name] = frames
        made.peaks[name] = (pk[0::2], pk[1::2])
    return extend_head(made, w, hp.head_ms,
                       {n: silence[track_channels[n]] for n in names})


def _mismatch(head: SilentHeadManifest, before: list[Placed], w: Work, hp: HeadPlan,
              mp3_bitrate: int, track_channels: dict[str, Channels], names: list[str],
              excluded: set[str]) -> str | None:
    """Why `head` is not the head assembly would make for unit `w` by `hp` (`before`:
    the plan's chunks of `hp.placed` that start before the unit), or None."""
    checks = {
        "chunk": (head.index, before[-1].chunk.index),
        "bitrate": (head.mp3_bitrate, mp3_bitrate),
        "unit start": (head.unit_start_ms, w.unit_start_ms),
        "render": ((head.from_ms, head.head_ms), (hp.from_ms, hp.head_ms)),
        "frames": ((head.first_frame, head.head_end_frame),
                   (w.first, owned_end(ms_to_samples(hp.head_ms)))),
        "placed": (head.placed, placed_sources(before)),
    }
    for what, (got, want) in checks.items():
        if got != want:
            return f"{what} {got} != {want}"
    if any(p.chunk.tracks for p in hp.placed[len(before):]):  # settle_head rules it out
        return "a chunk in the unit has tracks"
    users = {s.partition(":")[0] for p in head.placed for s in p.sources}
    if not (users | {t.track for t in head.tracks} | set(head.speech)).isdisjoint(excluded):
        return "it holds audio of a member opted out at stop (consent)"
    have = {t.track: t for t in head.tracks}
    for name in names:
        t = have.get(name)
        if t is None and (name == MIX_TRACK or name in users):
            return f"no head of track {name}"
        if t is not None and t.channels != track_channels[name]:
            return f"track {name} has {t.channels} channel(s), the plan's {track_channels[name]}"
    return None


def live_head(store: ObjectStore, layout: MeetingLayout, before: PieceManifest,
              after: PieceManifest, mp3_bitrate: int, channels: dict[str, Channels]
              ) -> tuple[int, int, dict[str, bytes]] | None:
    """For the audio so far (`live.py`): the head stored after the chunk of piece
    `before` when silent chunks follow it up to the chunk of piece `after` and the head
    joins them: it starts where `before`'s unit and frames end, was made from that
    chunk's raw tracks (the last it placed), ends before `after`'s unit and first frame,
    at the bitrate and with the channel counts (`channels`, by track) of the live tracks:
    (its first frame, its frame count, its frames' bytes by track: tracks it lacks are
    silence there). None otherwise (the live audio is silence there, as before). Raises
    TemporaryFailure for S3 failures."""
    key = layout.head_after_key(before.index)
    try:
        head = SilentHeadManifest.model_validate(store.get_json(key))
    except (NotFoundError, InvalidInputError, ValidationError):
        return None
    if head.index != before.index or head.mp3_bitrate != mp3_bitrate \
            or head.unit_start_ms != before.unit_end_ms \
            or head.first_frame != before.end_frame \
            or head.head_ms >= after.unit_start_ms \
            or head.head_end_frame >= after.first_frame \
            or not head.placed or head.placed[-1].index != before.index \
            or head.placed[-1].sources != before.sources:
        return None
    frames: dict[str, bytes] = {}
    for t in head.tracks:
        try:
            data = base64.b64decode(t.mp3, validate=True)
            count = len(split_frames(data))
        except ValueError:
            return None
        if channels.get(t.track) != t.channels or sha256_hex(data) != t.sha256 \
                or count != t.frames or count != head.head_end_frame - head.first_frame:
            return None
        frames[t.track] = data
    return head.first_frame, head.head_end_frame - head.first_frame, frames
