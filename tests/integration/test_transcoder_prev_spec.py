"""The spec of the chunk before, as a chunk's piece and silent head read it, on real
SeaweedFS, ffmpeg and libopus (`pieces.prev_spec`).

The recorder's upload grant covers `chunks/<k>/`, `chunk.json` included. A forged
`chunks/<k-1>/chunk.json` with a far window (chunk 60 at 3 600 000 ms reading
`{index 59, startMs 0, endMs 20}`) made the piece render `[0, 3 660 000)` ms: an
hour-long render and MP3 encode that could OOM-kill the chunk's Job. The frozen spec the
chunk before's Job stored (`outputs/<k-1>/chunk.json`, outside the grant) is read first,
and either spec is refused unless it is the chunk right before (index, adjacency, length).
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
from voicetrack_transcoder.pieces import build_piece, chunk_context
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
