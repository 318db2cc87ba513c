"""The computed head of a final track (`infotag.info_head`) equals what ffmpeg's mp3 muxer
writes for the same frames, delay and padding patched (`mp3grid.tag_file`): the Info
frame's header, counts, TOC (across the muxer's bag halving at 400 frames), LAME fields,
music CRC and tag CRC, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicetrack_transcoder.infotag import MusicCrc, crc16, frame_bytes, info_head
from voicetrack_transcoder.mp3grid import FRAME, crc16_lame, encode_frames, tag_file


@pytest.mark.parametrize("mp3_bitrate", [48, 64, 128, 320])
@pytest.mark.parametrize("channels", [1, 2])
def test_head_equals_ffmpegs_tag(tmp_path: Path, mp3_bitrate: int, channels: int) -> None:
    rng = np.random.default_rng(mp3_bitrate + channels)
    pcm = (rng.standard_normal((FRAME * 30, channels)) * 2000).astype(np.int16)
    frames = encode_frames(pcm, mp3_bitrate, tmp_path, "noise")
    assert {len(f) for f in frames} == {frame_bytes(mp3_bitrate)}
    for count in (3, 31, 400, 401, 1203):
        body = b"".join(frames[i % len(frames)] for i in range(count))
        raw = tmp_path / "frames"
        raw.write_bytes(body)
        out = tmp_path / "tagged.mp3"
        n = count * FRAME - 576 - 1000
        tag_file(raw, out, n)
        music = MusicCrc()
        for i in range(0, len(body), 1000):
            music.update(body[i: i + 1000])
        assert music.value == crc16(body)
        head = info_head(count, mp3_bitrate, channels, n, music.value)
        assert head + body == out.read_bytes(), count


def test_crc16_is_lames() -> None:
    data = bytes(range(256)) * 7
    assert crc16(data) == crc16_lame(data)
    assert crc16(b"123456789") == 0xBB3D


def test_head_refuses_what_cannot_be() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        info_head(10, 128, 2, 10 * FRAME, 0)
    with pytest.raises(ValueError, match="not an MPEG-1 Layer III"):
        frame_bytes(100)
