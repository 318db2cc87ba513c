"""The audio so far extended Job by Job (`liveextend.py`, from `live/state.json`) on real
SeaweedFS and ffmpeg: after every step its files are byte for byte what a full assembly
of the same chunks gives (silent chunks, a failed chunk and a speaker joining later
included); a body of 10 MiB or more is composed server-side, the Job uploading a bounded
amount and reading no earlier piece; a damaged state or a changed live object sends the
Job back to the full assembly, still correct.

The reference is a second meeting (`REF`) holding copies of the same `piece.json` and
`head-after.json` documents (whose piece keys name the first meeting's objects),
assembled from chunk 0 at every step."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from minio.helpers import MIN_PART_SIZE

from tests.audio_helpers import Speaker, upload_chunks
from tests.counting_store import CountingStore
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import LiveManifest, PieceManifest, PieceTrack
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.live import assemble_live
from voicetrack_transcoder.liveextend import COMPOSE_MIN_BODY
from voicetrack_transcoder.mp3grid import encode_frames

pytestmark = pytest.mark.integration

GUILD = "123456789012345678"
LAYOUT = MeetingLayout("liveinc", GUILD, "LiVeInCrEmEnTaL1")
REF = MeetingLayout("liveinc", GUILD, "LiVeInCrEfErEnCe")
A, B = "111111111111111111", "222222222222222222"
SPEAKERS = [
    # A's speech reaches the end of chunk 1: the silent chunk 2 has a stored head
    Speaker(A, 190, talks=[(300, 3990), (10300, 11700)], markers=[1010, 3500, 11000]),
    # B joins in chunk 4, mono-coded (a mono track: another Info frame layout)
    Speaker(B, 260, talks=[(8200, 9800), (12300, 15600)], markers=[9010, 13010],
            mono_coded=True),
]
WINDOWS = [(0, 2000), (2000, 4000), (4000, 6000), (6000, 8000), (8000, 10000),
           (10000, 12000), (12000, 14000), (14000, 16000)]
NOBODY = {2, 3}
"""Chunks nobody spoke in (no tracks, no Job)."""
FAILED = 5
"""A chunk with speech whose transcode failed: no piece, named silent by the operator."""


def _bucket(s3_server: S3Settings, name: str) -> CountingStore:
    store = CountingStore(dataclasses.replace(s3_server, bucket=f"{name}-{os.getpid()}"))
    store.ensure_bucket()
    return store


def _copy_to_ref(store: ObjectStore, indexes: range) -> None:
    """The reference meeting's piece and head documents: copies of the live meeting's."""
    for i in indexes:
        for src, dst in ((LAYOUT.piece_manifest_key(i), REF.piece_manifest_key(i)),
                         (LAYOUT.head_after_key(i), REF.head_after_key(i))):
            with contextlib.suppress(NotFoundError):
                store.copy(src, dst)


def _files(store: ObjectStore, manifest: LiveManifest | None) -> dict[str, tuple[int, str]]:
    """track → (bytes, sha256) of the objects `manifest` lists, each checked against the
    manifest's size and ETag (a live track has no sha256)."""
    assert manifest is not None
    out = {}
    for t in manifest.tracks:
        data = store.get_bytes(t.key)
        assert (len(data), store.stat(t.key)[1], t.sha256) == (t.bytes, t.etag, None), t.key
        out[t.track] = (t.bytes, sha256_hex(data))
    return out


def _piece(store: ObjectStore, index: int) -> PieceManifest | None:
    try:
        return PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(index)))
    except NotFoundError:
        return None


def _reference(store: ObjectStore, chunks: int, silent: set[int]) -> LiveManifest | None:
    """A full assembly of the same chunks (no state: from chunk 0)."""
    store.delete_prefix(REF.live_root)
    return assemble_live(store, REF, chunks=chunks, silent=silent)


def _same(store: ObjectStore, live: LiveManifest | None, ref: LiveManifest | None) -> None:
    assert (live is None) == (ref is None)
    if live is None or ref is None:
        return
    assert _files(store, live) == _files(store, ref)
    assert [t.track for t in live.tracks] == [t.track for t in ref.tracks]
    assert (live.duration_ms, live.paused_ms) == (ref.duration_ms, ref.paused_ms)
    assert [t.key for t in live.tracks] == [LAYOUT.live_key(t.track, "mp3")
                                           for t in live.tracks]


@pytest.fixture(scope="module")
def recorded(s3_server: S3Settings) -> CountingStore:
    """The session's chunks transcoded as its Jobs would (chunk 5's failed: no piece)."""
    store = _bucket(s3_server, "vt-liveinc")
    session = upload_chunks(store, LAYOUT, SPEAKERS, WINDOWS, 16_000, [])
    assert {c.index for c in session.chunks if not c.tracks} == NOBODY
    for chunk in session.chunks:
        store.put_json(LAYOUT.chunk_manifest_key(chunk.index), chunk.to_api())
        if chunk.tracks and chunk.index != FAILED:
            transcode_chunk(store, chunk, LAYOUT.prefix, ["mp3"], 128, tracks="both")
    _copy_to_ref(store, range(len(WINDOWS)))
    assert store.exists(REF.head_after_key(1))  # the silent unit after A's speech
    return store


def test_each_step_equals_the_full_assembly(recorded: CountingStore) -> None:
    """Jobs for 1..8 chunks in turn, each extending the last: after every one the live
    files are the full assembly's bytes, and the Job read no piece of a chunk an earlier
    Job had joined. B's track appears at chunk 4, silence before it."""
    store = recorded
    store.delete_prefix(LAYOUT.live_root)
    joined: set[str] = set()
    for chunks in range(1, len(WINDOWS) + 1):
        silent = {i for i in (*NOBODY, FAILED) if i < chunks}
        store.reset()
        live = assemble_live(store, LAYOUT, chunks=chunks, silent=silent)
        read = set(store.read)
        assert not read & joined, (chunks, read & joined)
        piece = _piece(store, chunks - 1)
        joined |= {t.key for t in piece.tracks} if piece else set()
        _same(store, live, _reference(store, chunks, silent))
        assert not store.list_keys(f"{LAYOUT.live_root}parts/")
    assert live is not None and {t.track for t in live.tracks} == {A, B, "mix"}
    assert {t.track: t.channels for t in live.tracks} == {A: 2, B: 1, "mix": 2}


def test_a_damaged_state_or_live_object_assembles_from_chunk_0(
        recorded: CountingStore) -> None:
    """A state that is not JSON, a live track deleted, one rewritten (another ETag): the
    Job assembles from chunk 0 (it reads chunk 0's pieces) and the files are right."""
    store = recorded
    first = PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(0)))

    def damage_state() -> None:
        store.put_bytes(LAYOUT.live_state_key, b"{not json")

    def delete_track() -> None:
        store.delete_keys([LAYOUT.live_key(A, "mp3")])

    def rewrite_track() -> None:
        key = LAYOUT.live_key("mix", "mp3")
        data = store.get_bytes(key)
        store.put_bytes(key, data[:-1] + bytes([data[-1] ^ 1]))

    for spoil in (damage_state, delete_track, rewrite_track):
        store.delete_prefix(LAYOUT.live_root)
        assert assemble_live(store, LAYOUT, chunks=4, silent={2, 3}) is not None
        spoil()
        store.reset()
        live = assemble_live(store, LAYOUT, chunks=7, silent={2, 3, 5})
        assert first.tracks[0].key in store.read, spoil.__name__  # from chunk 0
        _same(store, live, _reference(store, 7, {2, 3, 5}))
        store.reset()  # and the state it wrote is extended again
        live = assemble_live(store, LAYOUT, chunks=8, silent={2, 3, 5})
        assert first.tracks[0].key not in store.read, spoil.__name__
        _same(store, live, _reference(store, 8, {2, 3, 5}))


def test_fewer_chunks_than_the_state_covers_assembles_from_chunk_0(
        recorded: CountingStore) -> None:
    store = recorded
    store.delete_prefix(LAYOUT.live_root)
    assemble_live(store, LAYOUT, chunks=8, silent={2, 3, 5})
    live = assemble_live(store, LAYOUT, chunks=2)
    _same(store, live, _reference(store, 2, set()))


# ------------------------------------------------------------ a body of more than 10 MiB

BIG = MeetingLayout("liveinc", GUILD, "LiVeBiGbOdY00001")
BITRATE = 320
BIG_FRAMES = [14_000, 40, 25]
"""Frames of chunks 0..2's pieces: chunk 0's make a 13.4 MB body at 320 kbit/s."""


def _synthetic_pieces(store: ObjectStore, workdir: Path) -> None:
    """Pieces of one stereo speaker and the mix, from real LAME frames repeated."""
    t = np.arange(48_000 * 2)
    pcm = (np.stack([np.sin(t * 0.03), np.sin(t * 0.05)], axis=1) * 8000).astype(np.int16)
    frames = encode_frames(pcm, BITRATE, workdir, "tone")[10:60]
    first = 0
    for index, count in enumerate(BIG_FRAMES):
        tracks = []
        for track in (A, "mix"):
            data = b"".join(frames[i % len(frames)] for i in range(count))
            key = f"{BIG.root}/outputs/{index:06d}/piece-{track}.mp3"
            store.put_bytes(key, data)
            tracks.append(PieceTrack(track=track, channels=2, key=key, frames=count,
                                     bytes=len(data), sha256=sha256_hex(data)))
        start_ms, end_ms = first * 24, (first + count) * 24
        piece = PieceManifest(
            tool_version=TOOL_VERSION, index=index, mp3_bitrate=BITRATE, origin_ms=start_ms,
            paused_ms=0, chunk_end_ms=end_ms, stereo_seen=True, unit_start_ms=start_ms,
            unit_end_ms=end_ms, first_frame=first, end_frame=first + count, sources=[],
            prev_used=False, tracks=tracks)
        for layout in (BIG, REF):
            store.put_json(layout.piece_manifest_key(index), piece.to_api())
        first += count


def test_a_large_body_is_composed_reading_and_uploading_a_bounded_amount(
        s3_server: S3Settings) -> None:
    """Chunk 0 gives a 13.4 MB body: the Job for chunks 0..1 composes it (5 MiB and the
    new frames uploaded, the rest copied in the store), reads no piece of chunk 0, and
    gives the full assembly's bytes at the same key; so does the next one."""
    store = _bucket(s3_server, "vt-livebig")
    with tempfile.TemporaryDirectory() as tmp:
        _synthetic_pieces(store, Path(tmp))
    first = assemble_live(store, BIG, chunks=1)
    assert first is not None and min(t.bytes for t in first.tracks) > COMPOSE_MIN_BODY
    old = {t.key: t.bytes for t in first.tracks}
    chunk0 = {t.key for t in PieceManifest.model_validate(
        store.get_json(BIG.piece_manifest_key(0))).tracks}
    for chunks in (2, 3):
        store.reset()
        live = assemble_live(store, BIG, chunks=chunks)
        assert live is not None
        assert set(store.composed) == set(old), store.composed
        assert not chunk0 & set(store.read)
        new_piece_bytes = sum(t.bytes for t in PieceManifest.model_validate(
            store.get_json(BIG.piece_manifest_key(chunks - 1))).tracks)
        uploaded = sum(store.uploaded.values())
        # per track: the head and 5 MiB of body; the new frames; the JSON documents
        assert uploaded < len(old) * (5 * 2**20 + 2048) + new_piece_bytes + 64 * 1024, \
            store.uploaded
        # read: of each old track its body's first 5 MiB, the new pieces and documents
        read = sum(store.read.values())
        assert read < len(old) * MIN_PART_SIZE + new_piece_bytes + 64 * 1024, store.read
        store.delete_prefix(REF.live_root)
        ref = assemble_live(store, REF, chunks=chunks)
        assert ref is not None and _files(store, live) == _files(store, ref)
        assert not store.list_keys(f"{BIG.live_root}parts/")
        old = {t.key: t.bytes for t in live.tracks}


def test_a_job_reads_of_the_old_tracks_only_the_first_part_it_uploads(
        s3_server: S3Settings) -> None:
    """Jobs for 2 and 3 chunks over 13.4 MB bodies: of each live track a Job reads exactly
    the body's first 5 MiB (the compose's uploaded first part), whatever the body's size,
    and the manifest has no sha256 but the ETag of the object written. Before, each old
    body was streamed whole (for the manifest's sha256): 13.4 MB per track per Job,
    growing with the session."""
    store = _bucket(s3_server, "vt-liveread")
    with tempfile.TemporaryDirectory() as tmp:
        _synthetic_pieces(store, Path(tmp))
    live = assemble_live(store, BIG, chunks=1)
    assert live is not None
    for chunks in (2, 3):
        keys = {t.key: t.bytes for t in live.tracks}
        store.reset()
        live = assemble_live(store, BIG, chunks=chunks)
        assert live is not None
        assert {k: store.read.get(k, 0) for k in keys} == dict.fromkeys(keys, MIN_PART_SIZE)
        assert all(size > 2 * MIN_PART_SIZE for size in keys.values())
        for t in live.tracks:
            assert (t.sha256, t.etag) == (None, store.stat(t.key)[1])


def test_iter_range_reads_from_an_offset_while_the_etag_matches(recorded: CountingStore) -> None:
    """`ObjectStore.iter_range` from an offset, and only while the ETag matches."""
    store = recorded
    store.put_bytes("range-test", b"0123456789")
    size, etag = store.stat("range-test")
    assert size == 10
    blocks: Iterator[bytes] = store.iter_range("range-test", 4, etag, part=3)
    assert b"".join(blocks) == b"456789"
    assert b"".join(store.iter_range("range-test", 4, etag, length=3)) == b"456"
    store.put_bytes("range-test", b"abcdefghij")
    with pytest.raises(InvalidInputError, match="PreconditionFailed"):
        b"".join(store.iter_range("range-test", 4, etag))
