"""The audio so far (`voicetrack-transcoder live`, `live.assemble_live`) on real SeaweedFS
and ffmpeg: exactly the chunks asked for, and a missing piece leaves the previous live
files as they were (the operator's live Job then fails and is run again later)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from tests.audio_helpers import Speaker, decode_file, upload_chunks
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import LiveManifest, PieceManifest
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack.termination import EXIT_TEMPORARY
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.live import assemble_live
from voicetrack_transcoder.mp3grid import FRAME, TOTAL_DELAY
from voicetrack_transcoder.pieces import PiecesUnusable

pytestmark = pytest.mark.integration

LAYOUT = MeetingLayout("livetest", "123456789012345678", "LiVeAuDiOsOfArXy")
A, B = "111111111111111111", "222222222222222222"
SPEAKERS = [Speaker(A, 170, talks=[(200, 1800), (4200, 5600)], markers=[900, 4900]),
            Speaker(B, 240, talks=[(2100, 3900), (6100, 7600)], markers=[3000, 7000])]
WINDOWS = [(0, 2000), (2000, 4000), (4000, 6000), (6000, 8000)]


@pytest.fixture(scope="module")
def store(s3_server: S3Settings) -> ObjectStore:
    """A bucket with four transcoded chunks of two speakers, each with its piece."""
    st = ObjectStore(dataclasses.replace(s3_server, bucket=f"vt-live-{os.getpid()}"))
    st.ensure_bucket()
    session = upload_chunks(st, LAYOUT, SPEAKERS, WINDOWS, 8000, [])
    for chunk in session.chunks:
        st.put_json(LAYOUT.chunk_manifest_key(chunk.index), chunk.to_api())
        transcode_chunk(st, chunk, LAYOUT.prefix, ["mp3"], 128, tracks="both")
    return st


def _never_assembled(store: ObjectStore) -> None:
    """Empty `live/` (as the operator does when consent changes): the next Job assembles
    from chunk 0. Tests that remove a piece the module's earlier Jobs already joined call
    it, since a piece is never removed once a live Job used it (each Job extends the last
    one's tracks from `live/state.json`)."""
    store.delete_prefix(LAYOUT.live_root)


def _live_files(store: ObjectStore) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in store.list_keys(LAYOUT.live_root)}


def test_exactly_the_chunks_asked_for(store: ObjectStore) -> None:
    live = assemble_live(store, LAYOUT, chunks=2)
    assert live is not None and live.assembly == "incremental"
    piece = PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(1)))
    n = piece.end_frame * FRAME - TOTAL_DELAY
    assert live.duration_ms == n // 48
    assert {t.track for t in live.tracks} == {A, B, MIX_TRACK}
    for t in live.tracks:
        data = store.get_bytes(t.key)
        # a live track has no sha256: its size and the ETag of the object written
        assert (len(data), store.stat(t.key)[1], t.sha256) == (t.bytes, t.etag, None)
        assert decode_file(data).shape[0] == n
    whole = assemble_live(store, LAYOUT)
    assert whole is not None and whole.duration_ms > live.duration_ms


def test_missing_piece_leaves_the_previous_live_files(store: ObjectStore) -> None:
    """The mix's piece of chunk 3 is gone: asking for four chunks fails naming it, and no
    live file changes (before the fix the speaker tracks, built first, were already
    replaced by four-chunk ones under the two-chunk manifest)."""
    before = assemble_live(store, LAYOUT, chunks=2)
    assert before is not None
    files = _live_files(store)
    piece = PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(3)))
    mix = next(t for t in piece.tracks if t.track == MIX_TRACK)
    good = store.get_bytes(mix.key)
    store.delete_keys([mix.key])
    try:
        with pytest.raises(PiecesUnusable, match=mix.key):
            assemble_live(store, LAYOUT, chunks=4)
        assert _live_files(store) == files
        manifest = LiveManifest.model_validate(store.get_json(LAYOUT.live_manifest_key))
        for t in manifest.tracks:
            data = store.get_bytes(t.key)
            assert (len(data), store.stat(t.key)[1]) == (t.bytes, t.etag)
    finally:
        store.put_bytes(mix.key, good)


def test_a_piece_never_made_is_silence_once_a_later_one_exists(store: ObjectStore) -> None:
    """Third review, fault 7: chunk 1's piece was never made (its build failed on an S3
    error, which the transcoder only logs); the live Job asked for four chunks failed on
    it every interval, so the audio so far stopped there for the rest of the session.
    Now chunk 1 is silence and the tracks run to chunk 3's end; with chunk 1 the last one
    asked for, it still fails (its piece may be on its way)."""
    key = LAYOUT.piece_manifest_key(1)
    saved = store.get_json(key)
    store.delete_keys([key])
    _never_assembled(store)
    try:
        live = assemble_live(store, LAYOUT, chunks=4)
        assert live is not None
        last = PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(3)))
        n = last.end_frame * FRAME - TOTAL_DELAY
        assert live.duration_ms == n // 48
        mix = decode_file(store.get_bytes(LAYOUT.live_key(MIX_TRACK, "mp3")))
        assert mix.shape[0] == n
        window = mix[2300 * 48:3700 * 48]  # B talks here, in chunk 1: silence now
        assert abs(window.astype(float)).max() == 0
        assert abs(mix[4300 * 48:5500 * 48].astype(float)).max() > 1000  # A in chunk 2
        with pytest.raises(PiecesUnusable, match="chunk 1 has no usable piece"):
            assemble_live(store, LAYOUT, chunks=2)
    finally:
        store.put_json(key, saved)


def test_more_chunks_than_pieces_is_an_error_naming_the_chunk(store: ObjectStore) -> None:
    with pytest.raises(PiecesUnusable, match="chunk 4 has no usable piece"):
        assemble_live(store, LAYOUT, chunks=5)


def test_the_command_exits_1_and_names_the_chunk(store: ObjectStore,
                                                  s3_server: S3Settings) -> None:
    """The operator's live Job runs this command: exit 1 (not 2, a piece may come later),
    the reason on stderr; exit 0 for the chunks there are."""
    env = {**os.environ, **dataclasses.replace(s3_server, bucket=store.settings.bucket).env()}
    exe = os.path.join(os.path.dirname(sys.executable), "voicetrack-transcoder")
    args = [exe, "live", "--prefix", LAYOUT.prefix, "--guild-id", LAYOUT.guild_id,
            "--meeting-id", LAYOUT.meeting_id]
    bad = subprocess.run([*args, "--chunks", "9"], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 1, bad.stderr
    assert "chunk 4 has no usable piece" in bad.stderr
    ok = subprocess.run([*args, "--chunks", "3"], env=env, capture_output=True, text=True,
                        timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "live: 3 track(s)" in ok.stdout
    worse = subprocess.run([*args, "--silent-chunks", "1,x"], env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert worse.returncode == 2 and "--silent-chunks" in worse.stderr


def test_silent_chunks_are_bridged_with_silence(store: ObjectStore) -> None:
    """A chunk that failed (or where nobody spoke) has no piece and never will: the
    operator names it in `silent`, and the audio so far goes on after it, silent in its
    unit and the same frames as without the gap elsewhere (before the fix the run
    stopped at that chunk for good)."""
    _never_assembled(store)
    whole = assemble_live(store, LAYOUT, chunks=4)
    assert whole is not None
    reference = {t.track: decode_file(store.get_bytes(t.key)) for t in whole.tracks}
    key = LAYOUT.piece_manifest_key(2)
    kept = store.get_json(key)
    store.delete_keys([key])
    try:
        # not named silent but followed by chunk 3's piece: bridged the same way (fault 7)
        _never_assembled(store)
        unnamed = assemble_live(store, LAYOUT, chunks=4)
        assert unnamed is not None
        made = [sha256_hex(store.get_bytes(t.key)) for t in unnamed.tracks]
        _never_assembled(store)
        bridged = assemble_live(store, LAYOUT, chunks=4, silent={2})
        assert bridged is not None and bridged.duration_ms == whole.duration_ms
        assert made == [sha256_hex(store.get_bytes(t.key)) for t in bridged.tracks]
        before = PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(1)))
        after = PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(3)))
        gap_from = before.end_frame * FRAME - TOTAL_DELAY
        gap_to = after.first_frame * FRAME - TOTAL_DELAY
        for t in bridged.tracks:
            pcm = decode_file(store.get_bytes(t.key))
            ref = reference[t.track]
            assert pcm.shape == ref.shape
            margin = 2 * FRAME  # MDCT overlap of the frames around the silent ones
            assert (pcm[: gap_from - margin] == ref[: gap_from - margin]).all(), t.track
            assert (pcm[gap_to + margin:] == ref[gap_to + margin:]).all(), t.track
            assert not pcm[gap_from + margin: gap_to - margin].any(), t.track
        assert ref[gap_from + 2 * FRAME: gap_to - 2 * FRAME].any()  # A spoke there
    finally:
        store.put_json(key, kept)


def test_an_s3_outage_exits_75(s3_server: S3Settings) -> None:
    """S3 away (a closed port): exit 75 (EX_TEMPFAIL), which the operator retries without
    counting it against the chunk (operator services/failures.py), the reason on
    stderr. Before: exit 1, counted like a crash."""
    away = dataclasses.replace(s3_server, endpoint="http://127.0.0.1:9", bucket="outage")
    exe = os.path.join(os.path.dirname(sys.executable), "voicetrack-transcoder")
    res = subprocess.run([exe, "live", "--prefix", LAYOUT.prefix, "--guild-id",
                          LAYOUT.guild_id, "--meeting-id", LAYOUT.meeting_id, "--chunks", "2"],
                         env={**os.environ, **away.env()}, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == EXIT_TEMPORARY == 75, res.stderr
    assert "error: ServiceUnavailable: " in res.stderr and "unreachable" in res.stderr
