"""Final tracks sent to S3 while they are written (`partupload.GrowingUpload`), on a real
SeaweedFS: the object is the file's bytes, head filled in last included; nothing is at
the key before `commit`; `abort` leaves no object and no pending upload. And assembly
through it, on a 7 min session at 320 kbit/s (SeaweedFS, as S3, refuses parts under
5 MiB but the last): the tracks are byte for byte those of one PUT per track, and a bad
piece found after parts were sent still falls back to full promotion with no upload
left behind.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.audio_helpers import Speaker, upload_chunks
from tests.integration.test_transcoder_pieces import _store
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PieceManifest, PromotionPlan
from voicetrack.objectstore import MIN_PART_BYTES, ObjectStore, S3Settings
from voicetrack_transcoder import partupload
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.partupload import GrowingUpload
from voicetrack_transcoder.promote import promote

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def pending_uploads(store: ObjectStore) -> list[str]:
    """Keys of multipart uploads begun and neither completed nor aborted."""
    found = store.client._list_multipart_uploads(store.bucket)
    return [u.object_name for u in found.uploads if u.object_name]


def grow(path: Path, size: int, step: int, upload: GrowingUpload) -> bytes:
    """Write `size` random bytes to `path` in `step`-byte writes, telling `upload` after
    each, then change the first 1000 bytes (as assembly fills in a track's head) and
    finish; returns the file's final bytes."""
    data = bytearray(os.urandom(size))
    with path.open("wb") as out:
        out.write(bytes(1000))
        for at in range(1000, size, step):
            out.write(data[at:at + step])
            out.flush()
            upload.grew(out.tell())
        out.seek(0)
        out.write(data[:1000])
    upload.finish(path.stat().st_size)
    return bytes(data)


def test_a_growing_file_arrives_whole_and_only_at_commit(
        s3_server: S3Settings, tmp_path: Path) -> None:
    store = _store(s3_server)
    path = tmp_path / "track.mp3"
    with ThreadPoolExecutor(4) as pool:
        upload = GrowingUpload(store, "final/a.mp3", path, "audio/mpeg", pool,
                               MIN_PART_BYTES)
        data = grow(path, 18 * MIB, MIB, upload)
        assert upload.upload_id is not None and upload.etags is not None
        assert len(upload.etags) == 4  # 5 MiB (head), 5, 5 (sent by grew), the last 3
        assert not store.exists("final/a.mp3")
        upload.commit()
    assert store.get_bytes("final/a.mp3") == data
    assert pending_uploads(store) == []


def test_a_short_file_is_one_put_at_commit(s3_server: S3Settings, tmp_path: Path) -> None:
    store = _store(s3_server)
    path = tmp_path / "short.mp3"
    with ThreadPoolExecutor(2) as pool:
        upload = GrowingUpload(store, "final/b.mp3", path, "audio/mpeg", pool,
                               MIN_PART_BYTES)
        data = grow(path, 7 * MIB, MIB, upload)
        assert upload.upload_id is None
        assert not store.exists("final/b.mp3")
        upload.commit()
    assert store.get_bytes("final/b.mp3") == data


def test_abort_leaves_no_object_and_no_upload(s3_server: S3Settings,
                                             tmp_path: Path) -> None:
    store = _store(s3_server)
    path = tmp_path / "failed.mp3"
    with ThreadPoolExecutor(2) as pool:
        upload = GrowingUpload(store, "final/c.mp3", path, "audio/mpeg", pool,
                               MIN_PART_BYTES)
        with path.open("wb") as out:
            out.write(os.urandom(16 * MIB))
        upload.grew(16 * MIB)  # part 2 sent
        assert upload.upload_id is not None
        assert pending_uploads(store) == ["final/c.mp3"]
        upload.abort()
    assert not store.exists("final/c.mp3")
    assert pending_uploads(store) == []
    with pytest.raises(ValueError, match="minimum"):
        GrowingUpload(store, "k", path, "audio/mpeg", pool, MIN_PART_BYTES - 1)


LONG = MeetingLayout("inc", "123456789012345678", "PaRtUpLoAd000001")
A, B = "111111111111111111", "222222222222222222"
LONG_SPEAKERS = [Speaker(A, 190, talks=[(300, 1900)], markers=[1010]),
                 Speaker(B, 260, talks=[(440_300, 441_900)], markers=[441_010])]
LONG_WINDOWS = [(0, 2000), (2000, 4000), (4000, 200_000), (200_000, 440_000),
                (440_000, 442_000), (442_000, 444_000)]
"""Two spoken 2 s chunks 7 min apart, silence between (no pieces there, LAME's silent
frame at assembly): at 320 kbit/s each track is ~17 MB, four parts (5 MiB, the last
~1.9 MiB), the second and third sent before the last units are written."""
SPOKEN_LATE = 4


@pytest.fixture(scope="module")
def long_session(s3_server: S3Settings) -> ObjectStore:
    store = _store(s3_server)
    session = upload_chunks(store, LONG, LONG_SPEAKERS, LONG_WINDOWS, 444_000, [])
    for chunk in session.chunks:
        store.put_json(LONG.chunk_manifest_key(chunk.index), chunk.to_api())
        if chunk.tracks:
            transcode_chunk(store, chunk, LONG.prefix, ["mp3"], 320, tracks="both")
    plan = PromotionPlan(guild_id=LONG.guild_id, meeting_id=LONG.meeting_id,
                         prefix=LONG.prefix, session_end_ms=444_000, speakers=[A, B],
                         chunks=session.chunks, gaps=[], formats=["mp3"], mp3_bitrate=320)
    store.put_json(LONG.promotion_plan_key, plan.to_api())
    return store


def test_assembly_in_parts_is_byte_for_byte_one_put(
        long_session: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store = long_session
    monkeypatch.setattr(partupload, "PART_BYTES", 1 << 30)  # one PUT per track
    whole = promote(store, LONG.promotion_plan_key)
    assert whole.assembly == "incremental", whole.fallback_reason
    one_put = {t.track: store.get_bytes(t.key) for t in whole.tracks}
    store.delete_keys([t.key for t in whole.tracks])
    monkeypatch.setattr(partupload, "PART_BYTES", MIN_PART_BYTES)
    sent: list[tuple[int, int]] = []  # (parts sent while writing, parts in all)
    finish = GrowingUpload.finish

    def counted(self: GrowingUpload, size: int) -> None:
        early = max(len(self.parts) - 1, 0)  # parts 2.. submitted by `grew`
        finish(self, size)
        sent.append((early, len(self.etags or [])))
    monkeypatch.setattr(GrowingUpload, "finish", counted)
    parts = promote(store, LONG.promotion_plan_key)
    assert parts.assembly == "incremental", parts.fallback_reason
    assert len(sent) == 3 and all(early == 2 and n == 4 for early, n in sent), sent
    for track in parts.tracks:
        data = store.get_bytes(track.key)
        assert len(data) == track.bytes > 3 * MIN_PART_BYTES
        assert data == one_put[track.track]
    assert [t.sha256 for t in parts.tracks] == [t.sha256 for t in whole.tracks]
    assert pending_uploads(store) == []


def test_a_bad_late_piece_after_parts_were_sent_falls_back(
        long_session: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs last: it damages a piece of the module's session."""
    store = long_session
    monkeypatch.setattr(partupload, "PART_BYTES", MIN_PART_BYTES)
    piece = PieceManifest.model_validate(
        store.get_json(LONG.piece_manifest_key(SPOKEN_LATE)))
    blob = piece.tracks[0].key
    damaged = bytearray(store.get_bytes(blob))
    damaged[500] ^= 0xFF
    store.put_bytes(blob, bytes(damaged))
    aborted: list[str] = []
    abort = GrowingUpload.abort

    def seen(self: GrowingUpload) -> None:
        if self.upload_id is not None and not self.committed:
            aborted.append(self.key)
        abort(self)
    monkeypatch.setattr(GrowingUpload, "abort", seen)
    manifest = promote(store, LONG.promotion_plan_key)
    assert manifest.assembly == "full"
    assert "piece.json says" in (manifest.fallback_reason or "")
    assert aborted  # parts had been sent before the damaged piece was reached
    assert pending_uploads(store) == []
    for track in manifest.tracks:
        assert len(store.get_bytes(track.key)) == track.bytes
