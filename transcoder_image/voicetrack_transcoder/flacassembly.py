"""Incremental promotion, the FLAC final tracks joined from the chunks' FLAC pieces
(`flacpieces.py` describes them) at assembly (`assembly.assemble`, which verifies the
pieces' manifests against the plan and writes the MP3 tracks when the plan asks for MP3,
and the waveforms and timeline from the MP3 pieces always).

A final FLAC track is `fLaC`, one STREAMINFO (exact total samples, true min/max block
sizes, frame sizes 0 = unknown, MD5 all zero = not computed: RFC 9639 §8.2) and every
unit's frames in order, each numbered at its place already. Units without a piece are
rendered here as the MP3 path renders them (`pieces.render`) and encoded as the Jobs
encode (`flacpieces.encode_runs`); digital silence, and a speaker absent from a piece, are
CONSTANT frames (`flacframes.silent_frames`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from voicetrack.audio import FRAME_MS, Channels, ms_to_samples
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalTrack, FlacPiece, PieceManifest, PromotionPlan
from voicetrack.objectstore import ObjectStore, sha256_file
from voicetrack_transcoder.ffmpeg import CONTENT_TYPES
from voicetrack_transcoder.flacframes import STREAMINFO_BYTES, silent_frames, stream_head
from voicetrack_transcoder.flacpieces import FlacRun, encode_runs
from voicetrack_transcoder.piececheck import Unit, around
from voicetrack_transcoder.pieces import PiecesUnusable, Placed, checked_bytes, render
from voicetrack_transcoder.streams import UndecodableOpus

REACH_MS = 1000
"""Output ms before a unit without a piece in which a chunk with tracks makes the unit
rendered (the decoders' and the limiter's tails); otherwise the unit is silent frames."""


def check_pieces(units: list[Unit], pieces: dict[int, PieceManifest],
                 chunk_index: Callable[[int], int]) -> None:
    """Every track piece of `pieces` has a FLAC piece of its unit's length. Raises
    PiecesUnusable naming the first that does not (`chunk_index(pos)`: the chunk index
    of plan position `pos`)."""
    for unit in units:
        if unit.chunk_pos is None:
            continue
        piece = pieces[chunk_index(unit.chunk_pos)]
        want = ms_to_samples(unit.end_ms) - ms_to_samples(unit.start_ms)
        for t in piece.tracks:
            if t.flac is None:
                raise PiecesUnusable(f"chunk {piece.index}: no FLAC piece of track "
                                     f"{t.track} (made without FLAC)")
            if t.flac.samples != want or t.flac.frames == 0:
                raise PiecesUnusable(f"chunk {piece.index}: FLAC piece of {t.track} has "
                                     f"{t.flac.samples} samples, its unit {want}")


@dataclass
class _Blocks:
    """Block sizes of the stream so far, for STREAMINFO (RFC 9639 §8.2: the minimum
    leaves out the last block)."""

    small: list[int] = field(default_factory=list)
    large: int = 0
    last: int = 0

    def add(self, min_block: int, max_block: int, last_block: int) -> None:
        if self.last:
            self.small.append(self.last)
        if min_block:
            self.small.append(min_block)
        self.large = max(self.large, max_block, last_block)
        self.last = last_block


@dataclass
class FlacContext:
    """What assembly knows for the FLAC tracks: the plan's units and chunks placed, the
    pieces by chunk index, the tracks (`names`, their channels), the speakers rendered and
    whether the mix is."""

    store: ObjectStore
    layout: MeetingLayout
    plan: PromotionPlan
    units: list[Unit]
    placed: list[Placed]
    pieces: dict[int, PieceManifest]
    names: list[str]
    speakers: list[str]
    track_channels: dict[str, Channels]
    want_mix: bool


Computed = dict[int, dict[str, tuple[Path, FlacPiece]]]
"""Frames made at assembly: by unit position and track, a file in the work directory
(not memory: a meeting with many failed chunks has many such units) and its
description."""


def render_units(ctx: FlacContext, pool: Executor, work: Path) -> Computed:
    """The FLAC frames of every unit without a piece, by unit position: silent frames when
    no chunk with tracks is within `REACH_MS` before its end, else rendered
    (`pieces.render`) and encoded. Raises PiecesUnusable when a packet does not decode
    (the full promotion conceals it) or ffmpeg's FLAC is not the frames expected;
    TemporaryFailure for S3 or ffmpeg failures."""
    rendering = threading.BoundedSemaphore(2)
    mix_channels = ctx.track_channels[MIX_TRACK] if ctx.want_mix else None

    def kept(u: int, runs: dict[str, FlacRun]) -> tuple[int, dict[str, tuple[Path, FlacPiece]]]:
        out = {}
        for i, (name, run) in enumerate(runs.items()):
            path = work / f"flac-unit-{u}-{i}.frames"
            path.write_bytes(run.data)
            out[name] = (path, run.described(str(path)))
        return u, out

    def one(u: int) -> tuple[int, dict[str, tuple[Path, FlacPiece]]]:
        unit = ctx.units[u]
        a, b = ms_to_samples(unit.start_ms), ms_to_samples(unit.end_ms)
        near = around(ctx.placed, unit.start_ms - REACH_MS, unit.end_ms)
        if not any(p.chunk.tracks for p in near):
            return kept(u, {n: FlacRun(*silent_frames(b - a, ctx.track_channels[n], a))
                            for n in ctx.names})
        from_ms = min(unit.start_ms, near[0].out_start_ms) // FRAME_MS * FRAME_MS
        channels = {s: ctx.track_channels[s] for s in ctx.speakers}
        own = work / f"flac-unit-{u}"
        own.mkdir()
        with rendering:
            try:
                rendered = render(ctx.store, ctx.layout, near, from_ms, unit.end_ms,
                                  ctx.speakers, channels, mix_channels)
            except UndecodableOpus as err:
                raise PiecesUnusable(f"a packet does not decode ({err})") from None
            try:
                runs = encode_runs({n: rendered.cut(n, a, b) for n in ctx.names}, a, own)
            except ValueError as err:  # ffmpeg's output not the frames expected
                raise PiecesUnusable(f"unit at {unit.start_ms} ms: {err}") from None
            return kept(u, runs)

    todo = [u for u, unit in enumerate(ctx.units) if unit.chunk_pos is None]
    return dict(pool.map(one, todo))


def write_track(ctx: FlacContext, name: str, path: Path, computed: Computed,
                blobs: Iterator[bytes]) -> int:
    """Write final FLAC track `name` to `path` (STREAMINFO, then every unit's frames:
    its piece's from `blobs`, in order, verified by the caller; silent frames where the
    piece has no track of `name`; `computed` for units without a piece); return its
    samples. Raises PiecesUnusable when the frames do not add up to the plan's length."""
    n_ch = ctx.track_channels[name]
    blocks = _Blocks()
    total = 0
    with path.open("wb") as out:
        out.write(bytes(STREAMINFO_BYTES))
        for u, unit in enumerate(ctx.units):
            if unit.chunk_pos is None:
                frames, meta = computed[u][name]
                data = frames.read_bytes()
            else:
                piece = ctx.pieces[ctx.plan.chunks[unit.chunk_pos].index]
                t = next((t for t in piece.tracks if t.track == name), None)
                if t is None or t.flac is None:  # check_pieces: a track absent from it
                    a, b = ms_to_samples(unit.start_ms), ms_to_samples(unit.end_ms)
                    silent = FlacRun(*silent_frames(b - a, n_ch, a))
                    data, meta = silent.data, silent.described("")
                else:
                    data, meta = next(blobs), t.flac
            out.write(data)
            total += meta.samples
            blocks.add(meta.min_block, meta.max_block, meta.last_block)
        want = ms_to_samples(ctx.units[-1].end_ms) if ctx.units else 0
        if total != want or not blocks.last:
            raise PiecesUnusable(f"FLAC track {name}: {total} samples assembled, the plan "
                                 f"has {want}")
        out.seek(0)
        out.write(stream_head(min(blocks.small, default=blocks.last), blocks.large, n_ch,
                              total))
    return total


def fetch_verified(store: ObjectStore, flac: FlacPiece) -> bytes:
    """A FLAC piece's bytes, checked against its manifest (`pieces.checked_bytes`).
    Raises PiecesUnusable when missing or different."""
    return checked_bytes(store, flac.key, flac.bytes, flac.sha256)


def flac_tracks(ctx: FlacContext, mp3_tracks: list[FinalTrack], pool: Executor, work: Path,
                upload: Callable[[str, Path, str], None],
                fetched: Callable[[list[FlacPiece]], Iterator[bytes]]) -> list[FinalTrack]:
    """The final FLAC track of every track in `mp3_tracks` (the MP3 ones assembly made,
    whose waveforms they share), written to `work` and handed to `upload(key, path,
    content type)`; returns `mp3_tracks` with each FLAC track placed as the plan's format
    order puts it, or, for a plan without MP3 (whose `mp3_tracks` assembly described but
    did not write), the FLAC tracks alone. `fetched(pieces)` yields the pieces' bytes, verified
    (`fetch_verified`), in order. Raises PiecesUnusable as `write_track`, `render_units`
    and `fetch_verified` do; TemporaryFailure for S3 or ffmpeg failures."""
    computed = render_units(ctx, pool, work)
    out: list[FinalTrack] = []
    for mp3 in mp3_tracks:
        name = mp3.track
        mine = [t.flac for unit in ctx.units if unit.chunk_pos is not None
                for t in ctx.pieces[ctx.plan.chunks[unit.chunk_pos].index].tracks
                if t.track == name and t.flac is not None]
        path = work / f"{name}.flac"
        blobs = fetched(mine)
        try:
            write_track(ctx, name, path, computed, blobs)
        finally:
            close = getattr(blobs, "close", None)
            if close is not None:
                close()
        key = ctx.layout.final_key(name, "flac")
        upload(key, path, CONTENT_TYPES["flac"])
        flac = mp3.model_copy(update={"format": "flac", "key": key,
                                      "bytes": path.stat().st_size,
                                      "sha256": sha256_file(path)})
        formats = ctx.plan.formats
        if "mp3" not in formats:
            out.append(flac)
        else:
            out += [mp3, flac] if formats.index("mp3") < formats.index("flac") \
                else [flac, mp3]
    return out
