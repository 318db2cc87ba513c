"""`voicetrack.lametag.LameCheck`, the check `download --live` makes of a live track whose
ETag is not its MD5: a track headed as the transcoder heads it (`infotag.info_head`)
passes however its bytes are cut into blocks; one bit flipped anywhere in the ID3 tag,
the Info frame or the audio fails, with the reason."""

from __future__ import annotations

import random

import pytest

from voicetrack.lametag import ID3V2_EMPTY, LameCheck, crc16
from voicetrack_transcoder.infotag import frame_bytes, info_head
from voicetrack_transcoder.mp3grid import FRAME

pytestmark = pytest.mark.unit


def _track(channels: int, frames: int = 50, bitrate: int = 64) -> bytes:
    """A track as the transcoder writes it: head computed from the frames' CRC; the
    frames are arbitrary bytes (the check reads CRCs and counts, not the audio)."""
    rng = random.Random(channels)
    body = bytes(rng.getrandbits(8) for _ in range(frames * frame_bytes(bitrate)))
    return info_head(frames, bitrate, channels, frames * FRAME - 1200, crc16(body)) + body


def _verdict(data: bytes, block: int) -> str | None:
    check = LameCheck()
    for i in range(0, len(data), block):
        check.update(data[i: i + block])
    return check.verdict()


@pytest.mark.parametrize("channels", [1, 2])
def test_a_transcoder_track_passes_in_any_blocks(channels: int) -> None:
    data = _track(channels)
    for block in (1, 7, 24, 300, len(data)):
        assert _verdict(data, block) is None, block


@pytest.mark.parametrize("channels", [1, 2])
def test_a_flipped_bit_anywhere_fails_with_the_reason(channels: int) -> None:
    data = _track(channels)
    head = len(info_head(50, 64, channels, 50 * FRAME - 1200, 0))
    rng = random.Random(7)
    spots = [0, 5, len(ID3V2_EMPTY), len(ID3V2_EMPTY) + 2, len(ID3V2_EMPTY) + 40,
             head - 3, head - 1, head, head + 1, len(data) - 1,
             *(rng.randrange(len(data)) for _ in range(40))]
    for at in spots:
        for bit in (0, 5):
            bad = bytearray(data)
            bad[at] ^= 1 << bit
            why = _verdict(bytes(bad), 1000)
            assert why, (at, bit)
            if at >= head:
                assert "audio is damaged" in why, (at, why)
            elif at >= len(ID3V2_EMPTY) + 4:
                assert "Info frame" in why, (at, why)


def test_a_cut_or_lengthened_track_fails() -> None:
    data = _track(2)
    assert "bytes of Info frame and audio" in (_verdict(data[:-1], 100) or "")
    assert "bytes of Info frame and audio" in (_verdict(data + b"\0", 100) or "")
    assert "shorter than its ID3 tag" in (_verdict(data[:100], 100) or "")
    assert "empty ID3v2.4 tag" in (_verdict(b"\xff\xfb" + data[2:], 100) or "")
