"""Incremental promotion: each chunk's share of the final MP3 tracks, made while recording
(the piece); `assembly.py` joins the pieces after stop.

Units. The output (session time with paused gaps cut, t = 0 at the first chunk's start)
is split at the end of every chunk: chunk `k`'s unit is `[end of chunk k-1, end of chunk
k)` in output time, the silence of a gap before it included. Its transcoder Job (which
has all speakers' raw tracks of the chunk) renders the unit exactly as the full promotion
does (`streams.SpeakerStream` over a small plan of chunks k-1 and k, so the decoder and the
limiter are warmed up by the audio before the unit), computes its waveform peaks and raw
voice activity, and encodes the MP3 frames of the global frame grid that the unit owns
(`mp3grid`): the piece, written to `outputs/<k>/piece-<track>.mp3` with `piece.json`.

Assembly (at promotion, `assembly.py`): every unit that ends at a promoted chunk's end
must have a piece whose manifest matches the plan (unit, frames, bitrate, channels, the
sha256 of every raw track decoded); units no Job made a piece for (a failed chunk's
window, a chunk without tracks — nobody spoke in it —, time after the last chunk) and the
frames after the last piece are rendered then from the raw chunks: the encoder's warm-up
after speech (or from the head the Job of the spoken chunk before it stored for the
silence after it, `silenthead.py`), LAME's silent frame alone where the warm-up holds no
audio either.
Speakers absent from a unit and from the chunk before it are digital silence there:
LAME's steady-state silent frame. Each final track is the frames in order
behind an Info tag with the exact delay and padding, computed from the frame count and
the music CRC (`infotag.info_head`), written once into the final file. A missing or
mismatching piece raises PiecesUnusable and promotion falls back to the full
re-promotion (`promote.py`).

FLAC: when the session asks for FLAC (with MP3 or alone), the Job also stores each
track's unit as FLAC frames beside the MP3 piece (`flacpieces.py`), and assembly joins
them (`flacassembly.py`). The MP3 piece is made for a FLAC-only session too: the units,
peaks and voice activity hang on it, and the audio so far of a live session is MP3
(`live.py`); assembly then writes the FLAC tracks only (no MP3 final object, none in the
manifest). A plan asking for Opus is promoted in full: the final Opus tracks are one
libopus encode of the decoded audio, and Opus packets carry encoder state (pre-skip,
MDCT overlap, prediction) across their boundaries, so pieces encoded per unit cannot be
cut and joined at unit boundaries without re-encoding.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voicetrack.audio import FRAME_MS, Channels, ms_to_samples, samples_to_ms
from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import (
    PieceManifest,
    PieceTrack,
    PromotionPlan,
)
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.context import chunk_context
from voicetrack_transcoder.ffmpeg import CONTENT_TYPES
from voicetrack_transcoder.flacpieces import encode_runs, store_pieces
from voicetrack_transcoder.mixer import Limiter, mix_sum
from voicetrack_transcoder.mp3grid import (
    FRAME,
    WARMUP_FRAMES,
    encode_many,
    owned,
    owned_end,
)
from voicetrack_transcoder.rawtracks import load_raw
from voicetrack_transcoder.speech import (
    voiced_runs,
)
from voicetrack_transcoder.streams import RawFetcher, SpeakerStream, build_timeline
from voicetrack_transcoder.waveform import PeaksBuilder

log = logging.getLogger(__name__)

class PiecesUnusable(Exception):
    """The pieces cannot make the final tracks (missing, damaged, made from other input):
    the message says which and why. Promotion then runs in full."""


def checked_bytes(store: ObjectStore, key: str, size: int, sha256: str) -> bytes:
    """The object at `key` (a piece's frames), checked to be the `size` bytes of digest
    `sha256` its piece.json says. Raises PiecesUnusable when it is missing or different;
    TemporaryFailure when S3 is away."""
    try:
        data = store.get_bytes(key)
    except NotFoundError:
        raise PiecesUnusable(f"{key} is missing") from None
    if len(data) != size or sha256_hex(data) != sha256:
        raise PiecesUnusable(f"{key}: {len(data)} bytes sha256 {sha256_hex(data)[:12]}… but "
                             f"piece.json says {size} bytes {sha256[:12]}…")
    return data


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Placed:
    """A chunk placed in output time: its window starts at `out_start_ms`."""

    chunk: ChunkSpec
    out_start_ms: int

    @property
    def out_end_ms(self) -> int:
        return self.out_start_ms + self.chunk.end_ms - self.chunk.start_ms


@dataclass
class Rendered:
    """Output samples `[start, start + n)` (per channel, output time) of each track."""

    start: int
    tracks: dict[str, np.ndarray] = field(default_factory=dict)
    wanted: set[str] = field(default_factory=set)
    """The tracks to encode (all rendered ones when empty)."""

    def cut(self, track: str, a: int, b: int) -> np.ndarray:
        """Samples `[a, b)` of `track` (output time)."""
        pcm = self.tracks[track]
        if a < self.start or b > self.start + pcm.shape[0]:
            raise ValueError(f"[{a}, {b}) not rendered ([{self.start}, "
                             f"{self.start + pcm.shape[0]}))")
        return pcm[a - self.start: b - self.start]


def render(store: ObjectStore, layout: MeetingLayout, placed: list[Placed], from_ms: int,
           to_ms: int, speakers: list[str], channels: dict[str, Channels],
           mix_channels: Channels | None) -> Rendered:
    """Every speaker's audio (and the mix unless `mix_channels` is None) over output time
    `[from_ms, to_ms)`, made as the full promotion makes it: the `placed` chunks (in
    order, within the range) as one stream per speaker, silence elsewhere. `from_ms` must
    be on the 20 ms grid. Raises InvalidInputError for a bad raw track."""
    chunks = [p.chunk.model_copy(update={
        "start_ms": p.out_start_ms - from_ms, "end_ms": p.out_end_ms - from_ms, "gap": None})
        for p in placed]
    plan = PromotionPlan(guild_id=layout.guild_id, meeting_id=layout.meeting_id,
                         prefix=layout.prefix, session_end_ms=to_ms - from_ms,
                         speakers=speakers, chunks=chunks)
    timeline = build_timeline(plan)
    slots = -(-(to_ms - from_ms) // FRAME_MS)
    n = ms_to_samples(to_ms - from_ms)
    out = Rendered(ms_to_samples(from_ms))
    with ThreadPoolExecutor(4, thread_name_prefix="piece-fetch") as pool:
        fetcher = RawFetcher(store, layout, chunks, pool)
        for user in speakers:
            stream = SpeakerStream(user, plan, timeline, fetcher, channels[user])
            try:
                out.tracks[user] = stream.read(slots)[:n] if slots else \
                    np.zeros((0, channels[user]), dtype=np.int16)
            finally:
                stream.close()
    if mix_channels is not None:
        limiter = Limiter(channels=mix_channels)
        blocks = [out.tracks[u] for u in speakers] or [np.zeros((n, mix_channels), np.int16)]
        mixed = limiter.process(mix_sum(blocks, mix_channels))
        out.tracks[MIX_TRACK] = np.concatenate([mixed, limiter.flush()])
    return out


@dataclass
class Work:
    """Output frames `[first, end)` (`end` None: to the stream's end) and the unit
    `[unit_start_ms, unit_end_ms)` whose peaks and voice activity go with them."""

    first: int
    end: int | None
    unit_start_ms: int
    unit_end_ms: int


@dataclass
class Made:
    """What `make` produced per track: frames, peaks (min, max int8 per pixel), runs."""

    frames: dict[str, list[bytes]]
    peaks: dict[str, tuple[np.ndarray, np.ndarray]]
    speech: dict[str, list[list[int]]]


def make(rendered: Rendered, work: Work, mp3_bitrate: int, workdir: Path,
         speakers: list[str]) -> Made:
    """Encode the frames of `work` for every rendered track and measure its unit (peaks of
    every track, voice activity of `speakers`, rendered even when their tracks are not
    wanted). `rendered` must start at or before `max(work.first - WARMUP_FRAMES, 0) * 1152`.
    """
    voiced = [u for u in speakers if u in rendered.tracks]
    encode = [k for k in rendered.tracks if not rendered.wanted or k in rendered.wanted]
    start_frame = max(work.first - WARMUP_FRAMES, 0)
    a, b = ms_to_samples(work.unit_start_ms), ms_to_samples(work.unit_end_ms)
    made = Made({}, {}, {})
    encoded = encode_many({track: rendered.cut(
        track, start_frame * FRAME, rendered.start + rendered.tracks[track].shape[0])
        for track in encode}, mp3_bitrate, workdir)
    made.frames = {track: owned(frames, start_frame, work.first, work.end, track)
                   for track, frames in encoded.items()}
    for track in encode:
        pcm = rendered.tracks[track]
        unit = rendered.cut(track, a, b)
        peaks = PeaksBuilder(channels=pcm.shape[1])
        peaks.add(unit)
        made.peaks[track] = peaks.finish()
    for track in voiced:
        made.speech[track] = voiced_runs(rendered.cut(track, a, b), work.unit_start_ms)
    return made


# ---------------------------------------------------------------- the chunk's piece


def chunk_sources(chunk: ChunkSpec) -> list[str]:
    return sorted(f"{t.user_id}:{t.sha256}" for t in chunk.tracks)


def build_piece(store: ObjectStore, chunk: ChunkSpec, prefix: str, mp3_bitrate: int,
                tracks: str = "both", flac: bool = False) -> PieceManifest | None:
    """Make and upload chunk `chunk`'s piece (see the module docstring); `piece.json` is
    written last. With `flac`, each track's unit is also stored as FLAC frames
    (`flacpieces.py`), described in its PieceTrack's `flac`. Returns None (and writes
    nothing) when the chunk's place in the output cannot be known
    (`context.chunk_context`). Raises InvalidInputError for a bad raw track of the chunk
    itself, TemporaryFailure for S3 or ffmpeg failures."""
    layout = MeetingLayout(prefix, chunk.guild_id, chunk.meeting_id)
    ctx = chunk_context(store, layout, chunk)
    if ctx is None:
        log.info("chunk %d: no context for a piece (previous chunk unknown)", chunk.index)
        return None
    out_start = chunk.start_ms - ctx.origin_ms - ctx.paused_ms
    out_end = out_start + chunk.duration_ms
    placed = [Placed(chunk, out_start)]
    prev_used = False
    unit_start = 0
    if ctx.prev is not None:
        prev_out_end = ctx.prev.end_ms - ctx.origin_ms - ctx.prev_paused_ms
        unit_start = prev_out_end
        try:  # a bad previous chunk fails its own transcode: silence in the plan
            for raw_track in ctx.prev.tracks:
                load_raw(store, layout, ctx.prev, raw_track)
            prev_used = True
            placed.insert(0, Placed(ctx.prev, prev_out_end - ctx.prev.duration_ms))
        except InvalidInputError:
            prev_used = False
    first = owned_end(ms_to_samples(unit_start)) if unit_start else 0
    end = owned_end(ms_to_samples(out_end))
    render_from = max(first - WARMUP_FRAMES, 0) * FRAME
    from_ms = min(unit_start, samples_to_ms(render_from)) // FRAME_MS * FRAME_MS
    if prev_used:
        from_ms = min(from_ms, placed[0].out_start_ms)
    speakers = sorted({t.user_id for p in placed for t in p.chunk.tracks})
    channels: dict[str, Channels] = {
        u: max((t.channels for p in placed for t in p.chunk.tracks if t.user_id == u),
               default=1) for u in speakers}
    want_speakers = tracks in ("perSpeaker", "both")
    want_mix = tracks in ("mixed", "both")
    mix_channels: Channels = 2 if ctx.stereo_seen else 1
    rendered = render(store, layout, placed, from_ms, out_end, speakers, channels,
                      mix_channels if want_mix else None)
    if not want_speakers:
        rendered.wanted = {MIX_TRACK}
    with tempfile.TemporaryDirectory(prefix="vt-piece-") as tmp:
        made = make(rendered, Work(first, end, unit_start, out_end), mp3_bitrate, Path(tmp),
                    speakers)
        a, b = ms_to_samples(unit_start), ms_to_samples(out_end)
        flacs = store_pieces(store, layout, chunk.index, encode_runs(
            {track: rendered.cut(track, a, b) for track in made.frames}, a, Path(tmp))) \
            if flac else {}
    piece_tracks = []
    for track, frames in made.frames.items():
        data = b"".join(frames)
        key = layout.piece_key(chunk.index, track, "mp3")
        store.put_bytes(key, data, CONTENT_TYPES["mp3"])
        mins, maxs = made.peaks[track]
        pairs = np.empty(mins.size * 2, dtype=np.int64)
        pairs[0::2], pairs[1::2] = mins, maxs
        piece_tracks.append(PieceTrack(
            track=track, channels=mix_channels if track == MIX_TRACK else channels[track],
            key=key, frames=len(frames), bytes=len(data), sha256=sha256_hex(data),
            peaks=pairs.tolist(), flac=flacs.get(track)))
    manifest = PieceManifest(
        tool_version=TOOL_VERSION, index=chunk.index, mp3_bitrate=mp3_bitrate,
        origin_ms=ctx.origin_ms, paused_ms=ctx.paused_ms, chunk_end_ms=chunk.end_ms,
        stereo_seen=ctx.stereo_seen, unit_start_ms=unit_start, unit_end_ms=out_end,
        first_frame=first, end_frame=end, sources=chunk_sources(chunk), prev_used=prev_used,
        prev_sources=chunk_sources(ctx.prev) if prev_used and ctx.prev else [],
        tracks=piece_tracks, speech={u: r for u, r in made.speech.items() if r})
    store.put_json(layout.piece_manifest_key(chunk.index), manifest.to_api())
    return manifest
