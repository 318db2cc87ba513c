"""The computed head of a final track (`infotag.info_head`) equals what ffmpeg's mp3 muxer
writes for the same frames, delay and padding patched (`mp3grid.tag_file`): the Info
frame's header, counts, TOC (across the muxer's bag halving at 400 frames), LAME fields,
music CRC and tag CRC, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicetrack_transcoder.infotag import (
    ID3V2_EMPTY,
    MusicCrc,
    crc16,
    frame_bytes,
    info_head,
)
from voicetrack_transcoder.mp3grid import FRAME, crc16_lame, encode_frames, tag_file

pytestmark = pytest.mark.unit


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


def test_head_of_a_track_past_4_gib_holds_the_byte_count_modulo_2_to_the_32() -> None:
    """Over 4 GiB (here ~75 h at 128 kbit/s) the 32-bit byte fields wrap, as ffmpeg's
    muxer writes them; before, `to_bytes(4)` raised OverflowError after the whole encode."""
    frames = (1 << 32) // frame_bytes(128) + 10
    head = info_head(frames, 128, 2, frames * FRAME - 576 - 1000, 0)
    info = head[head.index(b"Info"):]
    assert int.from_bytes(info[8:12], "big") == frames
    size = len(head) - len(ID3V2_EMPTY)  # the Info frame after the empty ID3v2 tag
    assert int.from_bytes(info[12:16], "big") == (size + frames * frame_bytes(128)) % (1 << 32)


def test_a_bitrate_lame_rounds_is_not_assembled_from_pieces() -> None:
    """The spec allows any 32..320 kbit/s; pieces are assembled only at an MPEG-1 Layer
    III bitrate, any other runs the full promotion (before: ValueError, promotion failed)."""
    from voicetrack.manifests import PromotionPlan
    from voicetrack_transcoder.assembly import assemble
    from voicetrack_transcoder.pieces import PiecesUnusable

    plan = PromotionPlan(guild_id="1" * 18, meeting_id="A" * 16, prefix="r",
                         session_end_ms=1000, speakers=[], chunks=[], mp3_bitrate=100)
    with pytest.raises(PiecesUnusable, match="100 kbit/s"):
        assemble(None, plan, [], {}, 2)  # type: ignore[arg-type]
