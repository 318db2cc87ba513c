"""`voicetrack recordings download --live`'s check of one live track
(`recordings.live.fetch_live_track`) on real SeaweedFS: a live track has no sha256 (live
Jobs extend the last object without reading it), so what is fetched is checked against
the live manifest's size and ETag, and its bytes by their MD5 when the ETag is one (a
single-part object, not SSE-KMS/SSE-C encrypted), else by the track's LAME Info tag; an
older manifest's sha256 is still checked. Never a false mismatch, and a damaged file is
not kept. Only a refused If-Match (412) means "replaced"."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Generator, Mapping
from pathlib import Path

import pytest

from voicetrack.errors import InvalidInputError, PreconditionFailed
from voicetrack.lametag import crc16
from voicetrack.manifests import LiveTrack
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack.recordings.live import LiveFile, fetch_live_track
from voicetrack_transcoder.infotag import frame_bytes, info_head
from voicetrack_transcoder.mp3grid import FRAME

pytestmark = pytest.mark.integration

KEY = "recordings/1/LiVeDoWnLoAd00001/live/mix.mp3"
AUDIO = b"\xff\xfb" + bytes(range(256)) * 40


def _track(store: ObjectStore, **over: object) -> LiveTrack:
    """The live manifest's entry for the object at KEY, as a live Job writes it."""
    size, etag = store.stat(KEY)
    fields: dict[str, object] = {"track": "mix", "kind": "mixed", "format": "mp3",
                                 "key": KEY, "bytes": size, "duration_ms": 1000,
                                 "etag": etag}
    return LiveTrack.model_validate({**fields, **over})


class _Flipping(ObjectStore):
    """Flips one bit of what it reads, at byte `at` (default the first): bytes damaged on
    their way."""

    at = 0

    def iter_range(self, key: str, offset: int = 0, etag: str | None = None,
                   part: int = 1 << 20, length: int | None = None,
                   on_headers: Callable[[Mapping[str, str]], None] | None = None
                   ) -> Generator[bytes, None, None]:
        pos = offset
        for block in super().iter_range(key, offset, etag, part, length, on_headers):
            if pos <= self.at < pos + len(block):
                i = self.at - pos
                block = block[:i] + bytes([block[i] ^ 1]) + block[i + 1:]
            pos += len(block)
            yield block


class _SseKms(ObjectStore):
    """The object store as an SSE-KMS bucket answers: an object's ETag is not the MD5 of
    its bytes (here the MD5 of SeaweedFS's ETag), and a GET says
    `x-amz-server-side-encryption: aws:kms`. If-Match takes that ETag."""

    def stat(self, key: str) -> tuple[int, str]:
        size, etag = super().stat(key)
        return size, hashlib.md5(etag.encode(), usedforsecurity=False).hexdigest()

    def iter_range(self, key: str, offset: int = 0, etag: str | None = None,
                   part: int = 1 << 20, length: int | None = None,
                   on_headers: Callable[[Mapping[str, str]], None] | None = None
                   ) -> Generator[bytes, None, None]:
        real = super().stat(key)[1]
        if etag is not None and etag != self.stat(key)[1]:
            raise PreconditionFailed(f"get {key}: PreconditionFailed")

        def with_sse(headers: Mapping[str, str]) -> None:
            if on_headers is not None:
                on_headers({**headers, "X-Amz-Server-Side-Encryption": "aws:kms"})

        yield from super().iter_range(key, offset, real, part, length, with_sse)


class _Refusing(ObjectStore):
    """A GET refused with a 4xx other than 412 (here as an InvalidRange would be)."""

    def iter_range(self, key: str, offset: int = 0, etag: str | None = None,
                   part: int = 1 << 20, length: int | None = None,
                   on_headers: Callable[[Mapping[str, str]], None] | None = None
                   ) -> Generator[bytes, None, None]:
        raise InvalidInputError(f"get {key}: InvalidRange: refused")
        yield b""


def _lame_track(size: int) -> bytes:
    """A track headed as the transcoder heads it (`infotag.info_head`, LAME Info tag with
    the music CRC), mono 64 kbit/s, at least `size` bytes; frames of arbitrary bytes."""
    frames = -(-size // frame_bytes(64))
    body = random.Random(size).randbytes(frames * frame_bytes(64))
    return info_head(frames, 64, 1, frames * FRAME - 1200, crc16(body)) + body


def test_a_live_track_is_verified_by_size_and_etag(object_store: ObjectStore,
                                                   tmp_path: Path) -> None:
    object_store.put_bytes(KEY, AUDIO, "audio/mpeg")
    track = _track(object_store)
    target = tmp_path / "mix.mp3"
    got = fetch_live_track(object_store, track, target)
    assert isinstance(got, LiveFile) and target.read_bytes() == AUDIO
    assert got.check == f"size and ETag {track.etag}, MD5"
    assert list(tmp_path.iterdir()) == [target]  # no part left


def test_a_damaged_live_track_is_not_kept(object_store: ObjectStore,
                                          tmp_path: Path) -> None:
    """Bytes damaged on the way (the ETag, a single-part upload's, is their MD5), or a
    size other than the manifest's: the reason, and neither the file nor an older copy
    at its name is left."""
    object_store.put_bytes(KEY, AUDIO, "audio/mpeg")
    target = tmp_path / "mix.mp3"
    for store, track, why in (
            (_Flipping(object_store.settings), _track(object_store), "MD5 "),
            (object_store, _track(object_store, bytes=len(AUDIO) + 1), "bytes, the live")):
        target.write_bytes(b"an older copy")
        got = fetch_live_track(store, track, target)
        assert isinstance(got, str) and why in got, got
        assert "sha256" not in got and list(tmp_path.iterdir()) == []


def test_a_track_replaced_since_the_manifest_was_read_is_fetched_again(
        object_store: ObjectStore, tmp_path: Path) -> None:
    """A newer live Job rewrote the object (another ETag): None (`download_live` reads the
    manifest again), not a mismatch, and nothing is left."""
    object_store.put_bytes(KEY, AUDIO, "audio/mpeg")
    track = _track(object_store)
    object_store.put_bytes(KEY, AUDIO + b"more", "audio/mpeg")
    assert fetch_live_track(object_store, track, tmp_path / "mix.mp3") is None
    assert list(tmp_path.iterdir()) == []


def test_a_multipart_live_track_is_verified_by_its_lame_tag(object_store: ObjectStore,
                                                            tmp_path: Path) -> None:
    """Over 5 MiB a live track is a multipart object (ETag `<md5>-<parts>`: not an MD5):
    its bytes are checked by its LAME Info tag. Before, only its size was, yet the file
    was said verified: a bit flipped in the audio or the Info frame was saved."""
    data = _lame_track(6 << 20)
    object_store.put_bytes(KEY, data, "audio/mpeg")
    track = _track(object_store)
    assert track.etag and "-" in track.etag
    target = tmp_path / "mix.mp3"
    got = fetch_live_track(object_store, track, target)
    assert isinstance(got, LiveFile) and target.read_bytes() == data
    assert got.check == f"size and ETag {track.etag}, LAME music and tag CRCs"
    flipping = _Flipping(object_store.settings)
    for at, why in ((len(data) - 1, "the audio is damaged"), (3 << 20, "the audio is damaged"),
                    (20 + 30, "the Info frame is damaged"), (3, "empty ID3v2.4 tag")):
        flipping.at = at
        target.write_bytes(b"an older copy")
        said = fetch_live_track(flipping, track, target)
        assert isinstance(said, str) and said.startswith("LAME Info tag: ") and why in said, \
            (at, said)
        assert list(tmp_path.iterdir()) == []


def test_an_sse_kms_live_track_is_not_refused_for_its_etag(object_store: ObjectStore,
                                                           tmp_path: Path) -> None:
    """SSE-KMS (and SSE-C) single-part ETags are not the MD5 of the bytes: the GET's
    encryption header says so, and the LAME tag checks them instead. Before: a false
    "MD5 …, the live manifest's ETag is …" and the file not saved."""
    kms = _SseKms(object_store.settings)
    data = _lame_track(40_000)
    object_store.put_bytes(KEY, data, "audio/mpeg")
    track = _track(kms)
    target = tmp_path / "mix.mp3"
    got = fetch_live_track(kms, track, target)
    assert isinstance(got, LiveFile) and target.read_bytes() == data, got
    assert got.check.endswith(", LAME music and tag CRCs")
    object_store.put_bytes(KEY, data[:-1] + bytes([data[-1] ^ 4]), "audio/mpeg")
    said = fetch_live_track(kms, _track(kms), target)
    assert isinstance(said, str) and "the audio is damaged" in said, said
    assert not target.exists()


def test_only_a_refused_if_match_is_a_replaced_track(object_store: ObjectStore,
                                                     tmp_path: Path) -> None:
    """SeaweedFS refuses a stale If-Match with 412, translated to PreconditionFailed; any
    other 4xx is an error, not "replaced" (before, every InvalidInputError was, and the
    track was fetched again and again for nothing)."""
    object_store.put_bytes(KEY, AUDIO, "audio/mpeg")
    stale = object_store.stat(KEY)[1]
    object_store.put_bytes(KEY, AUDIO + b"more", "audio/mpeg")
    with pytest.raises(PreconditionFailed, match="PreconditionFailed"):
        b"".join(object_store.iter_range(KEY, 0, stale))
    track = _track(object_store)
    with pytest.raises(InvalidInputError, match="InvalidRange"):
        fetch_live_track(_Refusing(object_store.settings), track, tmp_path / "mix.mp3")
    assert list(tmp_path.iterdir()) == []


def test_a_live_manifest_from_before_etags_is_checked_by_its_sha256(
        object_store: ObjectStore, tmp_path: Path) -> None:
    object_store.put_bytes(KEY, AUDIO, "audio/mpeg")
    target = tmp_path / "mix.mp3"
    good = _track(object_store, etag=None, sha256=sha256_hex(AUDIO))
    got = fetch_live_track(object_store, good, target)
    assert isinstance(got, LiveFile) and got.check == f"sha256 {sha256_hex(AUDIO)}"
    bad = _track(object_store, etag=None, sha256="0" * 64)
    why = fetch_live_track(object_store, bad, target)
    assert isinstance(why, str) and why.startswith("sha256 ") and not target.exists()
