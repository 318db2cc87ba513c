"""FLAC frames as bytes (`flacframes`, RFC 9639): the CRCs against their catalogue check
values, the coded number up to 36 bits, and frames from ffmpeg renumbered and joined into
one variable-blocksize stream that ffmpeg decodes, every check on, to the same samples."""

from __future__ import annotations

import itertools
import subprocess

import numpy as np
import pytest

from voicetrack_transcoder.flacframes import (
    STREAMINFO_BYTES,
    crc8,
    crc16,
    crc16_shift,
    decode_number,
    encode_number,
    frames_of,
    parse_header,
    renumber,
    silent_frames,
    stream_head,
    strip_head,
)

pytestmark = pytest.mark.unit


def test_crc8_and_crc16_known_vectors() -> None:
    """CRC-8 poly 0x07 init 0 ("CRC-8/SMBUS") and CRC-16 poly 0x8005 init 0
    ("CRC-16/UMTS"): the catalogue's check values over "123456789", and a frame header
    from the RFC's example (RFC 9639 Appendix D.1: `FF F8 69 18 00 00` has CRC-8 0xBF)."""
    assert crc8(b"123456789") == 0xF4
    assert crc16(b"123456789") == 0xFEE8
    assert crc8(bytes.fromhex("fff869180000")) == 0xBF
    assert crc8(b"") == crc16(b"") == 0


def test_crc16_shift_is_appending_zero_bytes() -> None:
    """crc * x^(8n) mod P is the CRC of the message followed by n zero bytes, which is
    what renumbering relies on (module docstring)."""
    for message in (b"\x01", b"123456789", bytes(range(40))):
        for n in (0, 1, 2, 7, 100, 4097):
            assert crc16_shift(crc16(message), n) == crc16(message + bytes(n))


@pytest.mark.parametrize("value, coded", [
    (0, "00"), (0x7F, "7f"), (0x80, "c280"), (0x7FF, "dfbf"), (0x800, "e0a080"),
    (0xFFFF, "efbfbf"), (0x10000, "f0908080"), ((1 << 31) - 1, "fdbfbfbfbfbf"),
    (1 << 31, "fe828080808080"), ((1 << 36) - 1, "febfbfbfbfbfbf"),
])
def test_coded_number_utf8_style(value: int, coded: str) -> None:
    """RFC 9639 §9.1.5: UTF-8's scheme, 7 bytes (0xFE lead) for 32 to 36 bits."""
    assert encode_number(value).hex() == coded
    assert decode_number(bytes.fromhex(coded), 0) == (value, len(coded) // 2)


def test_coded_number_round_trips_and_bounds() -> None:
    for bits in range(37):
        for value in {(1 << bits) - 1, 1 << bits, (1 << bits) + 12345}:
            if value < 1 << 36:
                data = encode_number(value)
                assert decode_number(b"x" + data, 1) == (value, len(data))
    with pytest.raises(ValueError):
        encode_number(1 << 36)
    assert decode_number(bytes.fromhex("c2"), 0) is None  # cut short
    assert decode_number(bytes.fromhex("c241"), 0) is None  # bad continuation
    assert decode_number(bytes.fromhex("ff80"), 0) is None  # no such lead


def test_silent_frames_past_2_to_the_31() -> None:
    """Sample numbers beyond 2^31 (a 12.4 h track at 48 kHz) and 2^32: headers parse
    back with the right number, CRC-8 and block size, and the CRC-16 is the frame's."""
    start = (1 << 32) + 4608 * 3 - 5
    data, blocks = silent_frames(10_000, 2, start)
    assert blocks == [4608, 4608, 784]
    frames = frames_of(data, start)
    assert [(f.header.number, f.header.block, f.header.variable) for f in frames] == [
        (start, 4608, True), (start + 4608, 4608, True), (start + 9216, 784, True)]
    for f in frames:
        body = data[f.start: f.end]
        assert crc16(body[:-2]) == int.from_bytes(body[-2:], "big")
    moved, _ = renumber(data, (1 << 35) + 1)
    assert [f.header.number for f in frames_of(moved)] == [
        (1 << 35) + 1, (1 << 35) + 4609, (1 << 35) + 9217]
    for f in frames_of(moved):
        assert crc16(moved[f.start: f.end - 2]) == int.from_bytes(moved[f.end - 2: f.end],
                                                                  "big")


def test_parse_header_refuses_damage() -> None:
    data, _ = silent_frames(4608, 1, 0)
    assert parse_header(data, 0) is not None
    for at in range(7):  # any bit of the header flipped: no header
        bad = bytearray(data)
        bad[at] ^= 0x10
        assert parse_header(bytes(bad), 0) is None, at


def _encode(pcm: np.ndarray) -> bytes:
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "s16le", "-ar", "48000", "-ac", str(pcm.shape[1]),
         "-i", "-", "-c:a", "flac", "-f", "flac", "-fflags", "+bitexact", "-flags:a",
         "+bitexact", "-"], input=pcm.astype("<i2").tobytes(), capture_output=True,
        check=True).stdout


def _strict_decode(data: bytes, channels: int) -> np.ndarray:
    proc = subprocess.run(
        ["ffmpeg", "-v", "error", "-err_detect", "crccheck+bitstream+buffer+explode",
         "-xerror", "-f", "flac", "-i", "-", "-f", "s16le", "-ac", str(channels), "-"],
        input=data, capture_output=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode()
    return np.frombuffer(proc.stdout, "<i2").reshape(-1, channels)


@pytest.mark.parametrize("channels", [1, 2])
def test_renumbered_runs_join_into_one_stream(channels: int) -> None:
    """Three separately encoded runs and silence, renumbered to their place: ffmpeg,
    checking CRC-8 and CRC-16 and stopping at the first error, decodes the joined stream
    to the very samples; one CRC-16 byte changed and it refuses."""
    rng = np.random.default_rng(7)
    n = 150_000
    tone = np.sin(np.arange(n) * 0.013) * 9000 + rng.normal(0, 400, n)
    pcm = np.stack([tone, tone * 0.5][:channels], axis=1).astype(np.int16)
    cuts = [0, 50_000, 60_000, n]
    joined, blocks = b"", []
    for a, b in itertools.pairwise(cuts):
        frames, sizes = renumber(strip_head(_encode(pcm[a:b])), a)
        joined += frames
        blocks += sizes
    silence, sizes = silent_frames(7_000, channels, n)
    joined += silence
    blocks += sizes
    data = stream_head(min(blocks[:-1]), max(blocks), channels, n + 7_000) + joined
    assert len(stream_head(16, 16, 1, 0)) == STREAMINFO_BYTES
    got = _strict_decode(data, channels)
    assert got.shape == (n + 7_000, channels)
    assert np.array_equal(got[:n], pcm) and not got[n:].any()
    assert [f.header.number for f in frames_of(joined)] == list(
        np.cumsum([0, *blocks[:-1]]))
    bad = bytearray(data)
    bad[-1] ^= 0x01
    proc = subprocess.run(
        ["ffmpeg", "-v", "error", "-err_detect", "crccheck+bitstream+buffer+explode",
         "-xerror", "-f", "flac", "-i", "-", "-f", "s16le", "-"], input=bytes(bad),
        capture_output=True)
    assert proc.returncode != 0 or proc.stderr


def test_a_header_inside_a_body_is_not_a_boundary() -> None:
    """Frame 0's body holds an exact copy of frame 1's header (sync code, right CRC-8, the
    coded number that follows frame 0): it is not taken for a frame, because frame 0 would
    then end without its CRC-16. Without that check the split lands inside frame 0."""
    data, _ = silent_frames(3 * 4608, 2, 0)
    frames = frames_of(data)
    f0, f1 = frames[0], frames[1]
    h1 = data[f1.start: f1.start + f1.header.size]
    body = data[f0.start: f0.end - 2]
    forged = body[: f0.header.size + 1] + h1 + body[f0.header.size + 1:]
    frame0 = forged + crc16(forged).to_bytes(2, "big")
    joined = frame0 + data[f1.start:]
    found = frames_of(joined)
    assert [(f.start, f.end) for f in found] == [
        (0, len(frame0)), (len(frame0), len(frame0) + f1.end - f1.start),
        (len(frame0) + f1.end - f1.start, len(joined))]
    assert joined.find(h1) < len(frame0)  # the copy is there, before the real one


def test_a_wrong_crc16_is_refused() -> None:
    data, _ = silent_frames(2 * 4608, 1, 0)
    bad = bytearray(data)
    bad[-1] ^= 0x01
    with pytest.raises(ValueError, match="CRC-16"):
        frames_of(bytes(bad))


def test_frames_of_needs_a_frame_at_the_start() -> None:
    data, _ = silent_frames(100, 1, 0)
    with pytest.raises(ValueError):
        frames_of(b"\x00" + data)
    with pytest.raises(ValueError):
        frames_of(data, 1)
    with pytest.raises(ValueError):
        strip_head(b"RIFF....")
