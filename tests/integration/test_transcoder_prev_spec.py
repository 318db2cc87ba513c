"""The spec of the chunk before, as a chunk's piece and silent head read it, on real
SeaweedFS, ffmpeg and libopus (`context.prev_spec`).

The recorder's upload grant covers `chunks/<k>/`, `chunk.json` included. A forged
`chunks/<k-1>/chunk.json` with a far window (chunk 60 at 3 600 000 ms reading
`{index 59, startMs 0, endMs 20}`) made the piece render `[0, 3 660 000)` ms: an
hour-long render and MP3 encode that could OOM-kill the chunk's Job. The frozen spec the
chunk before's Job stored (`outputs/<k-1>/chunk.json`, outside the grant) is read first,
and either spec is refused unless it is the chunk right before (index, adjacency, length).

Without the chunk before's `piece.json`, the context is summed from the earlier specs
(`context.chunk_context`): those were the recorder's `chunk.json` of every earlier chunk,
so a forged earlier window moved the piece in output time. Each is now the frozen copy
where there is one, and a set that does not make one chain gives no context.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import pytest

from tests.audio_helpers import Speaker, upload_chunks
from voicetrack.chunkspec import ChunkSpec
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PieceManifest
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.context import chunk_context
from voicetrack_transcoder.pieces import build_piece
from voicetrack_transcoder.silenthead import placed_before

pytestmark = pytest.mark.integration

LAYOUT = MeetingLayout("prev", "100000000000000007", "PrEvSpEcFoRgEdAa")
A, B = "200000000000000011", "200000000000000012"
SPEAKERS = [Speaker(A, 190, talks=[(200, 5800)], markers=[3000]),
            Speaker(B, 270, talks=[(1500, 4500)], markers=[3500])]
"""Both talk across the boundary at 4000 ms: chunk 2's piece decodes chunk 1's audio."""
WINDOWS = [(0, 2000), (2000, 4000), (4000, 6000)]
_buckets = itertools.count(1)


@dataclasses.dataclass
class Made:
    store: ObjectStore
    chunks: list[ChunkSpec]
    piece: PieceManifest
    """Chunk 2's piece as its Job made it from the genuine specs."""


def _made(s3_server: S3Settings) -> Made:
    store = ObjectStore(dataclasses.replace(
        s3_server, bucket=f"vt-prev-spec-{os.getpid()}-{next(_buckets)}"))
    store.ensure_bucket()
    session = upload_chunks(store, LAYOUT, SPEAKERS, WINDOWS, 6000, [])
    for chunk in session.chunks:
        store.put_json(LAYOUT.chunk_manifest_key(chunk.index), chunk.to_api())
        transcode_chunk(store, chunk, LAYOUT.prefix, ["mp3"], 96, tracks="both")
    piece = PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(2)))
    assert piece.prev_used and piece.prev_sources
    return Made(store, session.chunks, piece)


def test_a_forged_previous_chunk_json_with_a_far_window_is_refused(
        s3_server: S3Settings) -> None:
    """No frozen spec of chunk 1 (its Job not done yet, or one before frozen specs) and
    its `chunk.json` forged to `[0, 20)` ms: chunk 2's context is unknown, as when that
    spec is missing, so no piece is made (assembly renders the unit) and no head placed;
    the render is never widened to the forged window."""
    made = _made(s3_server)
    store, chunk = made.store, made.chunks[2]
    genuine = chunk_context(store, LAYOUT, chunk)
    assert genuine is not None and genuine.prev == made.chunks[1]
    store.delete_keys([LAYOUT.frozen_spec_key(1), LAYOUT.piece_manifest_key(2)])
    for forged in ({"startMs": 0, "endMs": 20, "tracks": []},      # far from chunk 2
                   {"index": 0},                                   # not chunk 1
                   {"startMs": 2000, "endMs": 3980}):               # not adjacent
        doc = {**made.chunks[1].to_api(), **forged}
        store.put_json(LAYOUT.chunk_manifest_key(1), doc)
        assert chunk_context(store, LAYOUT, chunk) is None, forged
        assert build_piece(store, chunk, LAYOUT.prefix, 96) is None, forged
        assert not store.exists(LAYOUT.piece_manifest_key(2))
        assert placed_before(store, LAYOUT, chunk, made.piece, 0) is None, forged


def test_the_frozen_previous_spec_is_preferred_to_the_recorders(
        s3_server: S3Settings) -> None:
    """Chunk 1's `chunk.json` overwritten through the grant with a spec that fits (same
    window, no tracks): chunk 2's piece is made from chunk 1's frozen spec, the same piece
    as from the genuine one (the recorder's would drop chunk 1's audio from it)."""
    made = _made(s3_server)
    store, chunk = made.store, made.chunks[2]
    forged = {**made.chunks[1].to_api(), "tracks": []}
    store.put_json(LAYOUT.chunk_manifest_key(1), forged)
    ctx = chunk_context(store, LAYOUT, chunk)
    assert ctx is not None and ctx.prev == made.chunks[1]
    again = build_piece(store, chunk, LAYOUT.prefix, 96)
    assert again == made.piece
    placed = placed_before(store, LAYOUT, chunk, made.piece, 0)
    assert placed is not None and [p.chunk for p in placed] == made.chunks
    # without the frozen spec, the recorder's (it fits) is what there is
    store.delete_keys([LAYOUT.frozen_spec_key(1)])
    ctx = chunk_context(store, LAYOUT, chunk)
    assert ctx is not None and ctx.prev == ChunkSpec.model_validate(forged)


FORGED_WINDOWS = {0: {"startMs": 1000, "endMs": 2000},
                  1: {"startMs": 3000, "endMs": 4000, "tracks": [],
                      "gap": {"startMs": 2000, "endMs": 3000, "cause": "paused"}}}
"""Earlier chunks' `chunk.json` moved through the grant: chunk 0 starting 1 s late (the
origin), chunk 1 after a forged 1 s pause (the pause total). Read as they are, they
placed chunk 2's piece 1 s early and 1 s late."""


@pytest.mark.parametrize("pieces_before", [[0], []], ids=["piece-0", "no-piece"])
def test_forged_earlier_chunk_jsons_do_not_move_the_piece(
        s3_server: S3Settings, pieces_before: list[int]) -> None:
    """Chunk 1 without a `piece.json` (its piece failed; `pieces_before` lists the
    earlier pieces kept): chunk 2's context is read from the earlier specs. With the
    recorder's `chunk.json` of chunks 0 and 1 forged (`FORGED_WINDOWS`) and their frozen
    copies intact, the context is the one the genuine chain gives, and the piece the
    same as the one made from chunk 1's `piece.json`: where a frozen copy is, the
    recorder's is never read."""
    made = _made(s3_server)
    store, chunk = made.store, made.chunks[2]
    from_piece = chunk_context(store, LAYOUT, chunk)
    assert from_piece is not None and from_piece.prev == made.chunks[1]
    store.delete_keys([LAYOUT.piece_manifest_key(i) for i in (0, 1, 2)
                       if i not in pieces_before])
    assert chunk_context(store, LAYOUT, chunk) == from_piece
    for index, forged in FORGED_WINDOWS.items():
        store.put_json(LAYOUT.chunk_manifest_key(index),
                       {**made.chunks[index].to_api(), **forged})
    assert chunk_context(store, LAYOUT, chunk) == from_piece
    assert build_piece(store, chunk, LAYOUT.prefix, 96) == made.piece


@pytest.mark.parametrize("forged", [
    {"endMs": 2020},                                   # overlaps chunk 1
    {"index": 1, "tracks": []},                        # a second chunk 1
    {"meetingId": "OtHeRmEeTiNgIdAa", "tracks": []},   # another meeting's
    {"startMs": 0, "endMs": 2000, "gap": {"startMs": 20, "endMs": 40, "cause": "paused"}},
], ids=["overlap", "duplicate", "other-meeting", "gap-after-start"])
def test_recorder_specs_that_do_not_chain_give_no_context(
        s3_server: S3Settings, forged: dict[str, object]) -> None:
    """No piece before chunk 2 and no frozen spec of chunk 0 (a chunk from before the
    operator froze specs): chunk 0's `chunk.json` is what there is, and is used as it
    is (the same context); forged so that the specs cannot be one session (an overlap,
    a duplicate index, another meeting, a gap after the chunk's start: a negative
    pause), chunk 2 gets no context and no piece (assembly renders its unit), never a
    context summed from an inconsistent set."""
    made = _made(s3_server)
    store, chunk = made.store, made.chunks[2]
    genuine = chunk_context(store, LAYOUT, chunk)
    store.delete_keys([*(LAYOUT.piece_manifest_key(i) for i in (0, 1, 2)),
                       LAYOUT.frozen_spec_key(0)])
    assert chunk_context(store, LAYOUT, chunk) == genuine
    store.put_json(LAYOUT.chunk_manifest_key(0), {**made.chunks[0].to_api(), **forged})
    assert chunk_context(store, LAYOUT, chunk) is None
    assert build_piece(store, chunk, LAYOUT.prefix, 96) is None
    assert not store.exists(LAYOUT.piece_manifest_key(2))


def test_a_hole_before_a_chunk_does_not_stop_the_pieces_after_it(s3_server: S3Settings) -> None:
    """Holes the promotion plan accepts (chunk 0 ending 20 ms before chunk 1 begins, with
    no gap: a window nobody sealed; chunk 2's specs gone: an index never sealed, as a
    recorder's lost-window marker can leave one) are not a broken chain: without the
    pieces before, the chunks after are still placed from the specs there are, as the
    plan places them.
    Before, one such hole refused every later chunk's context walking back to the same
    piece: no piece for the rest of the session."""
    made = _made(s3_server)
    store, chunk = made.store, made.chunks[2]
    genuine = chunk_context(store, LAYOUT, chunk)
    store.delete_keys([LAYOUT.piece_manifest_key(i) for i in (0, 1, 2)])
    store.put_json(LAYOUT.frozen_spec_key(0), {**made.chunks[0].to_api(), "endMs": 1980})
    assert chunk_context(store, LAYOUT, chunk) == genuine
    store.delete_keys([LAYOUT.frozen_spec_key(0), LAYOUT.chunk_manifest_key(0)])
    store.put_json(LAYOUT.frozen_spec_key(0), made.chunks[0].to_api())
    later = made.chunks[1].model_copy(update={"index": 3, "start_ms": 4000, "end_ms": 6000,
                                             "tracks": []})
    chunk3 = made.chunks[2].model_copy(update={"index": 4, "start_ms": 6000, "end_ms": 8000,
                                               "tracks": []})
    store.put_json(LAYOUT.frozen_spec_key(3), later.to_api())
    store.delete_keys([LAYOUT.frozen_spec_key(2), LAYOUT.chunk_manifest_key(2)])
    ctx = chunk_context(store, LAYOUT, chunk3)  # chunk 2 gone as well: a hole of indexes
    assert ctx is not None and (ctx.origin_ms, ctx.paused_ms, ctx.prev) == (0, 0, later)


def test_a_long_silence_does_not_stop_the_pieces_after_it(s3_server: S3Settings) -> None:
    """Nobody speaks for 70 chunks (about 12 minutes of 10 s chunks): those chunks have no
    tracks, hence no Job and no piece, only the frozen specs the operator wrote. The
    first chunk after the silence is placed from the last piece before it (chunk 2's)
    and the specs in between; before, a look-back of 64 chunks gave no context, so no
    piece for the rest of the session. Chunk 0 never coming is no stop either: the
    origin is the first chunk there is, as in the plan."""
    made = _made(s3_server)
    store = made.store
    silent = [made.chunks[1].model_copy(update={
        "index": i, "start_ms": 6000 + 2000 * (i - 3), "end_ms": 8000 + 2000 * (i - 3),
        "tracks": []}) for i in range(3, 73)]
    for spec in silent:
        store.put_json(LAYOUT.frozen_spec_key(spec.index), spec.to_api())
    after = made.chunks[2].model_copy(update={
        "index": 73, "start_ms": silent[-1].end_ms, "end_ms": silent[-1].end_ms + 2000,
        "tracks": []})
    ctx = chunk_context(store, LAYOUT, after)
    assert ctx is not None and (ctx.origin_ms, ctx.paused_ms, ctx.prev) == (0, 0, silent[-1])
    store.delete_keys([LAYOUT.piece_manifest_key(i) for i in (0, 1, 2)]
                      + [LAYOUT.frozen_spec_key(0), LAYOUT.chunk_manifest_key(0)])
    ctx = chunk_context(store, LAYOUT, after)
    assert ctx is not None and (ctx.origin_ms, ctx.paused_ms) == (2000, 0)
