"""Incremental promotion, before assembly: the plan's units (`pieces.py` describes
them) and every piece's manifest read and checked against the plan.

Consent (docs/consent.md, "Promotion"): a piece made from the audio of a member the plan
excludes (in `sources`, `prevSources` or as a track of its own) is never used: reading
it raises PiecesUnusable, and promotion runs in full from the plan's raw tracks.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydantic import ValidationError

from voicetrack.audio import Channels, ms_to_samples
from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import PieceManifest, PromotionPlan
from voicetrack.objectstore import ObjectStore
from voicetrack_transcoder.mp3grid import owned_end
from voicetrack_transcoder.pieces import PiecesUnusable, Placed, chunk_sources
from voicetrack_transcoder.streams import build_timeline

MANIFEST_READERS = 8
"""piece.json objects read at once (a 1 h session has 360 of them)."""


@dataclass
class Unit:
    """Output time `[start_ms, end_ms)` (ms) that one piece owns (see `pieces.py`)."""

    start_ms: int
    end_ms: int
    chunk_pos: int | None
    """Position in plan.chunks of the chunk the unit ends with, whose Job made its piece
    (None: a gap, the tail, or a chunk without tracks: nobody spoke in its window, so the
    operator ran no Job; assembly renders such a unit, as a gap's)."""


def plan_units(plan: PromotionPlan) -> tuple[list[Unit], list[Placed]]:
    """The units of the plan's output (see the module docstring) and its chunks placed."""
    placed: list[Placed] = []
    units: list[Unit] = []
    at = start = 0
    for seg in build_timeline(plan):
        if seg.cut:
            continue
        length = seg.end_ms - seg.start_ms
        if seg.chunk is not None:
            placed.append(Placed(plan.chunks[seg.chunk], at))
        at += length
        ends_unit = seg.chunk is not None or any(
            g.cause == "chunk-failed" and g.end_ms == seg.end_ms for g in plan.gaps)
        if ends_unit:
            pieced = seg.chunk is not None and bool(plan.chunks[seg.chunk].tracks)
            units.append(Unit(start, at, seg.chunk if pieced else None))
            start = at
    if at > start:
        units.append(Unit(start, at, None))
    return units, placed


def around(placed: list[Placed], from_ms: int, to_ms: int) -> list[Placed]:
    """The placed chunks that overlap `[from_ms, to_ms)`."""
    return [p for p in placed if p.out_end_ms > from_ms and p.out_start_ms < to_ms]


def read_pieces(store: ObjectStore, layout: MeetingLayout, plan: PromotionPlan,
                units: list[Unit], names: list[str], track_channels: dict[str, Channels]
                ) -> dict[int, PieceManifest]:
    """The piece manifest of every unit that ends at a chunk, by chunk index, read
    `MANIFEST_READERS` at a time and checked against the plan (unit, frames, bitrate,
    sources, previous chunk, a piece for every track that needs one, channels). Raises
    PiecesUnusable naming the first chunk (in output order) whose piece is missing,
    unreadable, holds audio of an excluded member or does not match."""
    indices = {c.index: c for c in plan.chunks}
    excluded = set(plan.excluded)
    ending = [(unit, plan.chunks[unit.chunk_pos]) for unit in units
              if unit.chunk_pos is not None]

    def get(item: tuple[Unit, ChunkSpec]) -> PieceManifest | str:
        chunk = item[1]
        try:
            return PieceManifest.model_validate(store.get_json(
                layout.piece_manifest_key(chunk.index)))
        except (NotFoundError, InvalidInputError, ValidationError) as err:
            return f"chunk {chunk.index}: no usable piece.json ({err})"

    with ThreadPoolExecutor(MANIFEST_READERS, thread_name_prefix="piece-json") as pool:
        read = list(pool.map(get, ending))
    pieces: dict[int, PieceManifest] = {}
    for (unit, chunk), piece in zip(ending, read, strict=True):
        if isinstance(piece, str):
            raise PiecesUnusable(piece)
        if holds_excluded(piece, excluded):  # no id: the reason lands in the manifest
            raise PiecesUnusable(f"chunk {chunk.index}: its piece holds audio of a member "
                                 "opted out at stop (consent)")
        prev = indices.get(chunk.index - 1)
        want_first = owned_end(ms_to_samples(unit.start_ms)) if unit.start_ms else 0
        checks = {
            "unit": ((piece.unit_start_ms, piece.unit_end_ms), (unit.start_ms, unit.end_ms)),
            "frames": ((piece.first_frame, piece.end_frame),
                       (want_first, owned_end(ms_to_samples(unit.end_ms)))),
            "bitrate": (piece.mp3_bitrate, plan.mp3_bitrate),
            "sources": (piece.sources, chunk_sources(chunk)),
            "previous chunk": ((piece.prev_used, piece.prev_sources),
                               (prev is not None, chunk_sources(prev) if prev else [])),
        }
        for what, (got, want) in checks.items():
            if got != want:
                raise PiecesUnusable(f"chunk {chunk.index}: piece {what} {got} != {want}")
        have = {t.track: t for t in piece.tracks}
        involved = {t.user_id for t in chunk.tracks} | (
            {t.user_id for t in prev.tracks} if prev else set())
        for name in names:
            t = have.get(name)
            if t is None and (name == MIX_TRACK or name in involved):
                raise PiecesUnusable(f"chunk {chunk.index}: no piece of track {name}")
            if t is not None and t.channels != track_channels[name]:
                raise PiecesUnusable(f"chunk {chunk.index}: piece of {name} has "
                                     f"{t.channels} channel(s), the track {track_channels[name]}")
        pieces[chunk.index] = piece
    return pieces


def holds_excluded(piece: PieceManifest, excluded: set[str]) -> bool:
    """Whether `piece` was made from audio of a user in `excluded`: a raw track it
    decoded (its chunk's `sources`, or the previous chunk's `prevSources`, which warm up
    the decoder, the limiter and the encoder of every track, the mix included), a track
    of its own, or voice activity. Decided from the piece's manifest, not from the plan:
    the piece was made before anyone knew who would be excluded."""
    users = {s.partition(":")[0] for s in [*piece.sources, *piece.prev_sources]}
    users |= {t.track for t in piece.tracks} | set(piece.speech)
    return not users.isdisjoint(excluded)
