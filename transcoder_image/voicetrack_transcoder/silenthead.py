"""The heads of silent units, made while recording (issue 13: stop -> final in seconds).

A window nobody spoke in right after speech is a unit without a piece (`pieces.py`):
assembly renders its first `silence.HEAD_MS` from the speech before it, for the encoder's
and decoders' tails, and repeats LAME's silent frame after (`silence.py`). At 1 h x 5
speakers with a silent window in six, those renders were most of what remained after
stop. So the transcoder Job of the next chunk someone spoke in, which runs while the
session records, makes that head exactly as assembly would (`silence.head_plan`, the one
home of the rule, then `render` and `silence.settled_head`) and stores it in the silent
chunk's outputs folder (`outputs/<k>/silent-head.json`, `SilentHeadManifest`, frames in
base64).

Assembly (`stored_head`) uses a stored head only when it is the head the plan asks for:
same unit, head end and frames, the same chunks decoded at the same places from the same
raw tracks (`placed`), the plan's bitrate and channel counts, every track it needs, the
bytes matching their sha256 and whole frames, no excluded member's audio (consent). Any
other head, or none, and assembly computes the unit as before (the fallback).
"""

from __future__ import annotations

import base64
import logging
import tempfile
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
from voicetrack_transcoder.mp3grid import owned_end, silent_frames, split_frames
from voicetrack_transcoder.pieces import Made, Placed, Work, chunk_context, chunk_sources, render
from voicetrack_transcoder.silence import HeadPlan, extend_head, head_plan, settled_head
from voicetrack_transcoder.waveform import SAMPLES_PER_PIXEL

log = logging.getLogger(__name__)

MAX_SILENT_RUN = 30
"""Silent windows a Job looks back through for the one after speech (5 min at 10 s)."""
MIN_SPOKEN_MS = 2000
"""Shortest spoken chunk before the silent window the Job makes a head after: a head's
render reaches ~1.1 s before the unit (`head_plan`), so with a longer chunk the chunk
before it is not decoded and the Job need not know it."""


def _spec(store: ObjectStore, layout: MeetingLayout, index: int) -> ChunkSpec | None:
    try:
        return ChunkSpec.model_validate(store.get_json(layout.chunk_manifest_key(index)))
    except (NotFoundError, InvalidInputError, ValidationError):
        return None


def silent_after_speech(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec
                        ) -> ChunkSpec | None:
    """The first chunk of the run of chunks without tracks right before `chunk` when a
    chunk with tracks precedes that run (at most `MAX_SILENT_RUN` back); None otherwise
    (the chunk before `chunk` has tracks, a spec is missing, or nobody spoke before)."""
    found: ChunkSpec | None = None
    for index in range(chunk.index - 1, max(chunk.index - 1 - MAX_SILENT_RUN, -1), -1):
        spec = _spec(store, layout, index)
        if spec is None:
            return None
        if spec.tracks:
            return found
        found = spec
    return None


def build_silent_head(store: ObjectStore, chunk: ChunkSpec, prefix: str, mp3_bitrate: int,
                      tracks: str = "both") -> SilentHeadManifest | None:
    """In chunk `chunk`'s Job: make and store the head of the silent unit after speech
    before it (see the module docstring). Returns None (nothing written) when there is
    none, its place cannot be known, or the head does not settle (assembly then renders
    the unit whole). Raises InvalidInputError for a bad raw track, TemporaryFailure for S3
    or ffmpeg failures."""
    layout = MeetingLayout(prefix, chunk.guild_id, chunk.meeting_id)
    silent = silent_after_speech(store, layout, chunk)
    if silent is None:
        return None
    ctx = chunk_context(store, layout, silent)
    if ctx is None or ctx.prev is None or not ctx.prev.tracks \
            or ctx.prev.duration_ms < MIN_SPOKEN_MS:
        return None
    spoken = ctx.prev
    unit_start = spoken.end_ms - ctx.origin_ms - ctx.prev_paused_ms
    silent_start = silent.start_ms - ctx.origin_ms - ctx.paused_ms
    unit_end = silent_start + silent.duration_ms
    placed = [Placed(spoken, unit_start - spoken.duration_ms), Placed(silent, silent_start)]
    w = Work(owned_end(ms_to_samples(unit_start)), owned_end(ms_to_samples(unit_end)),
             unit_start, unit_end)
    hp = head_plan(w, placed)
    if hp is None:
        return None
    speakers = sorted({t.user_id for p in hp.placed for t in p.chunk.tracks})
    channels: dict[str, Channels] = {
        u: max(t.channels for p in hp.placed for t in p.chunk.tracks if t.user_id == u)
        for u in speakers}
    mix_channels: Channels = 2 if ctx.stereo_seen else 1
    names = (speakers if tracks in ("perSpeaker", "both") else []) + (
        [MIX_TRACK] if tracks in ("mixed", "both") else [])
    track_channels = {**channels, MIX_TRACK: mix_channels}
    rendered = render(store, layout, hp.placed, hp.from_ms, hp.head_ms, speakers, channels,
                      mix_channels if MIX_TRACK in names else None)
    rendered.wanted = set(names)
    with tempfile.TemporaryDirectory(prefix="vt-head-") as tmp:
        silence = silent_frames(mp3_bitrate, {track_channels[n] for n in names}, Path(tmp))
        head = settled_head(rendered, w, hp.head_ms, mp3_bitrate, Path(tmp), speakers,
                            {n: silence[track_channels[n]] for n in names})
    if head is None:
        log.info("chunk %d: the head of silent chunk %d does not settle", chunk.index,
                 silent.index)
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
        tool_version=TOOL_VERSION, index=silent.index, mp3_bitrate=mp3_bitrate,
        unit_start_ms=unit_start, unit_end_ms=unit_end, head_ms=hp.head_ms,
        first_frame=w.first, head_end_frame=owned_end(ms_to_samples(hp.head_ms)),
        end_frame=owned_end(ms_to_samples(unit_end)), placed=placed_sources(hp),
        tracks=head_tracks, speech={u: r for u, r in head.speech.items() if r})
    store.put_json(layout.silent_head_key(silent.index), manifest.to_api())
    return manifest


def placed_sources(hp: HeadPlan) -> list[PlacedSource]:
    """The chunks a head's render decodes, as a SilentHeadManifest records them."""
    return [PlacedSource(index=p.chunk.index, out_start_ms=p.out_start_ms,
                         out_end_ms=p.out_end_ms, sources=chunk_sources(p.chunk))
            for p in hp.placed]


def stored_head(store: ObjectStore, layout: MeetingLayout, index: int, w: Work,
                hp: HeadPlan, mp3_bitrate: int, track_channels: dict[str, Channels],
                names: list[str], silence: dict[int, bytes], excluded: set[str]
                ) -> Made | None:
    """What `make` gives for unit `w` (silent chunk `index`'s, whose head assembly would
    make by `hp`) from the head stored for it, checked as the module docstring says and
    extended with LAME's silent frame (`silence`, by channel count) to `w.end`; None when
    there is no such head or it does not verify (the reason is logged). Raises
    TemporaryFailure for S3 failures."""
    key = layout.silent_head_key(index)
    try:
        head = SilentHeadManifest.model_validate(store.get_json(key))
    except NotFoundError:
        return None
    except (InvalidInputError, ValidationError) as err:
        log.warning("%s unreadable, the unit is computed: %s", key, err)
        return None
    reason = _mismatch(head, index, w, hp, mp3_bitrate, track_channels, names, excluded)
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


def _mismatch(head: SilentHeadManifest, index: int, w: Work, hp: HeadPlan,
              mp3_bitrate: int, track_channels: dict[str, Channels], names: list[str],
              excluded: set[str]) -> str | None:
    """Why `head` is not the head assembly would make for unit `w`, or None."""
    checks = {
        "chunk": (head.index, index),
        "bitrate": (head.mp3_bitrate, mp3_bitrate),
        "unit": ((head.unit_start_ms, head.unit_end_ms), (w.unit_start_ms, w.unit_end_ms)),
        "head": (head.head_ms, hp.head_ms),
        "frames": ((head.first_frame, head.head_end_frame, head.end_frame),
                   (w.first, owned_end(ms_to_samples(hp.head_ms)), w.end)),
        "placed": (head.placed, placed_sources(hp)),
    }
    for what, (got, want) in checks.items():
        if got != want:
            return f"{what} {got} != {want}"
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
              next_first_frame: int, mp3_bitrate: int, channels: dict[str, Channels]
              ) -> tuple[int, int, dict[str, bytes]] | None:
    """For the audio so far (`live.py`): the stored head of the silent chunk right after
    the chunk of piece `before`, when it joins it (its unit starts where the piece's ends,
    its frames where the piece's end and end by `next_first_frame`, the next piece's
    first), was made from that chunk's raw tracks at the bitrate and with the channel
    counts (`channels`, by track) of the live tracks: (its first frame, its frame count,
    its frames' bytes by track: tracks it lacks are silence there). None otherwise (the
    live audio is silence there, as before). Raises TemporaryFailure for S3 failures."""
    key = layout.silent_head_key(before.index + 1)
    try:
        head = SilentHeadManifest.model_validate(store.get_json(key))
    except (NotFoundError, InvalidInputError, ValidationError):
        return None
    if head.index != before.index + 1 or head.mp3_bitrate != mp3_bitrate \
            or head.unit_start_ms != before.unit_end_ms \
            or head.first_frame != before.end_frame \
            or head.head_end_frame > min(head.end_frame, next_first_frame) \
            or not head.placed or head.placed[0].index != before.index \
            or head.placed[0].sources != before.sources:
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
