"""The raw chunk format (voicetrack/oggopus.py): Ogg framing, CRC, headers, round trips."""

from __future__ import annotations

import struct

import pytest

from voicetrack.audio import FRAME_SAMPLES, OPUS_SILENCE_FRAME
from voicetrack.oggopus import (
    OggOpusError,
    decode_ogg_opus,
    encode_ogg_opus,
    iter_ogg_packets,
    ogg_crc,
    opus_head,
    opus_packet_samples,
)

pytestmark = pytest.mark.unit


def _reference_crc(data: bytes) -> int:
    """RFC 3533's CRC written out bit by bit: polynomial 0x04C11DB7, MSB first, init 0."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


@pytest.mark.parametrize("data", [b"", b"\x00", b"OggS", bytes(range(256)) * 3])
def test_crc_matches_the_rfc_definition(data: bytes) -> None:
    assert ogg_crc(data) == _reference_crc(data)


def test_crc_of_a_known_page() -> None:
    # The usual CRC check string under RFC 3533's parameters (poly 0x04C11DB7, init 0,
    # no reflection, no final XOR).
    assert ogg_crc(b"123456789") == 0x89A1897F


def _packets(n: int) -> list[bytes]:
    # 20 ms CELT frames (TOC 0xFC: config 31, stereo, code 0) of varying sizes, some longer
    # than 255 bytes so lacing spans several segments, one exactly 510 bytes.
    sizes = [3, 120, 255, 510, 700, 1275]
    return [bytes([0xFC]) + bytes([i % 251]) * (sizes[i % len(sizes)] - 1) for i in range(n)]


def test_round_trip_keeps_every_packet_and_counts_samples() -> None:
    packets = _packets(173)
    stream = decode_ogg_opus(encode_ogg_opus(packets))
    assert stream.packets == packets
    assert stream.pre_skip == 0
    assert stream.channels == 2
    assert stream.samples == 173 * FRAME_SAMPLES
    assert stream.granule == 173 * FRAME_SAMPLES


def test_pages_carry_granules_and_flags() -> None:
    data = encode_ogg_opus([OPUS_SILENCE_FRAME] * 120, serial=7)
    pages = []
    pos = 0
    while pos < len(data):
        _, _, kind, granule, serial, seq, _, nseg = struct.unpack_from("<4sBBqIIIB", data, pos)
        body = sum(data[pos + 27: pos + 27 + nseg])
        pages.append((kind, granule, serial, seq))
        pos += 27 + nseg + body
    assert pages[0] == (0x02, 0, 7, 0)  # BOS, OpusHead
    assert pages[1][1:] == (0, 7, 1)  # OpusTags
    assert [p[3] for p in pages] == list(range(len(pages)))
    assert pages[-1][0] == 0x04 and pages[-1][1] == 120 * FRAME_SAMPLES  # EOS
    granules = [p[1] for p in pages[2:]]
    assert granules == sorted(granules) and granules[0] == 50 * FRAME_SAMPLES


def test_head_is_rfc7845_with_pre_skip_zero() -> None:
    head = opus_head()
    assert head[:8] == b"OpusHead"
    version, channels, pre_skip, rate, gain, family = struct.unpack("<BBHIhB", head[8:])
    assert (version, channels, pre_skip, rate, gain, family) == (1, 2, 0, 48_000, 0, 0)


def test_empty_stream_is_valid_and_silent() -> None:
    stream = decode_ogg_opus(encode_ogg_opus([]))
    assert stream.packets == [] and stream.samples == 0


@pytest.mark.parametrize(("packet", "samples"), [
    (OPUS_SILENCE_FRAME, 960),          # CELT 20 ms, code 0
    (bytes([0xE0]), 120),               # CELT 2.5 ms (config 28)
    (bytes([0xF0]), 480),               # CELT 10 ms (config 30)
    (bytes([0x08]), 960),               # SILK NB 20 ms (config 1)
    (bytes([0x01]) + b"\0", 480 * 2),   # SILK NB 10 ms, code 1: two frames
    (bytes([0x7B, 0x03]), 960 * 3),     # Hybrid FB 20 ms, code 3, three frames
    (bytes([0x1B, 0x02]), 2880 * 2),    # SILK NB 60 ms, code 3, two frames
])
def test_packet_samples(packet: bytes, samples: int) -> None:
    assert opus_packet_samples(packet) == samples


def test_malformed_packets_are_rejected() -> None:
    with pytest.raises(OggOpusError):
        opus_packet_samples(b"")
    with pytest.raises(OggOpusError):
        opus_packet_samples(bytes([0x0B]))  # code 3 without its frame-count byte


def test_corruption_is_reported_with_its_offset() -> None:
    data = bytearray(encode_ogg_opus(_packets(60)))
    flipped = bytearray(data)
    flipped[200] ^= 0xFF
    with pytest.raises(OggOpusError, match="CRC mismatch"):
        decode_ogg_opus(bytes(flipped))
    with pytest.raises(OggOpusError, match="truncated"):
        decode_ogg_opus(bytes(data[:-10]))
    with pytest.raises(OggOpusError, match="no Ogg page at byte 0"):
        decode_ogg_opus(b"RIFF" + bytes(data[4:]))
    with pytest.raises(OggOpusError, match="OpusHead"):
        decode_ogg_opus(b"")


def test_packets_split_across_pages_are_joined() -> None:
    # 60 packets of 1275 bytes need 6 segments each: pages break on the 255-segment limit.
    packets = [bytes([0xFC]) + bytes([i]) * 1274 for i in range(60)]
    data = encode_ogg_opus(packets)
    assert [p for p, _ in iter_ogg_packets(data)][2:] == packets
