"""The head of a final MP3 track, computed: an empty ID3v2 tag and the LAME Info frame,
from the frame count, the frame size and the music CRC, with no pass over the audio.

Facts used: the Xing/Info header and LAME extension layout ("Mp3 Info Tag rev 1
specifications", gabriel.mp3-tech.org/mp3infotag.html): after the frame header and the
side information (17 bytes mono, 32 stereo, MPEG-1) come `Info` (a CBR file), the flags
(frames, bytes, TOC, quality: 0x0F), the frame count (audio frames, the Info frame not
counted), the byte count (the Info frame and the audio), a 100-byte seek TOC, the quality
(0), then the LAME extension: a 9-byte encoder string, revision, lowpass, replay gain
(8), flags, bitrate, 12-bit encoder delay and 12-bit padding, misc, mp3 gain, preset (2),
music length (4: the byte count again), music CRC (CRC-16/ARC of the audio frames) and
the tag CRC (CRC-16/ARC of the frame's bytes before it; the layout's constants, the CRC
and the reader's check are in `voicetrack.lametag`). Which fields ffmpeg 5.1's mp3
muxer fills, and how (`libavformat/mp3enc.c`: the frame header's bitrate, the encoder
string `Lavf` under `+bitexact`, the TOC sampled from its 400 "bags" of byte positions,
the empty ID3v2.4 tag it writes first), is reproduced so that the bytes equal what
`mp3grid.tag_file` (ffmpeg's muxer, then the delay and padding patched) writes for the
same frames; the tests check that equality.

At 48 kHz, MPEG-1 Layer III frames without the padding bit are all `3 * kbit/s` bytes
(144000 * bitrate / 48000), so the byte positions the TOC samples are known from the
frame count alone.
"""

from __future__ import annotations

from voicetrack.lametag import (
    BITRATES,
    ID3V2_EMPTY,
    LAME_BYTES,
    RATE_INDEX_48K,
    XING_BYTES,
    crc16,
    side_info_bytes,
)
from voicetrack_transcoder.mp3grid import ENCODER_DELAY, FRAME

__all__ = ["ID3V2_EMPTY", "MP3_BITRATES", "MusicCrc", "crc16", "frame_bytes", "info_head",
           "toc"]

MP3_BITRATES = frozenset(BITRATES[1:])
"""The bitrates (kbit/s) a final track's frames can have; the spec allows any 32..320,
which LAME rounds to one of these, so only these are assembled from pieces."""
_BAGS = 400
"""ffmpeg's XING_NUM_BAGS: byte positions sampled, halved when full."""


class MusicCrc:
    """The running music CRC (CRC-16/ARC) of audio frames fed in order with `update`."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        """Continue the CRC over `data`."""
        self.value = crc16(data, self.value)


def frame_bytes(mp3_bitrate: int) -> int:
    """Bytes of one 48 kHz MPEG-1 Layer III frame at `mp3_bitrate` kbit/s, no padding bit.
    Raises ValueError for a bitrate MPEG-1 Layer III does not have."""
    if mp3_bitrate not in MP3_BITRATES:
        raise ValueError(f"mp3 bitrate {mp3_bitrate} kbit/s is not an MPEG-1 Layer III one")
    return 144_000 * mp3_bitrate // 48_000


def _header(mp3_bitrate: int, channels: int) -> tuple[bytes, int, int]:
    """(4-byte header, frame bytes, side information bytes) of the Info frame: ffmpeg's
    dummy header (no CRC, mode stereo or mono, no flags) at the stream's bitrate, or the
    next one up where the tag does not fit."""
    side = side_info_bytes(channels)
    index = BITRATES.index(mp3_bitrate)
    while 4 + side + XING_BYTES + LAME_BYTES > frame_bytes(BITRATES[index]):
        index += 1
    mode = 0xC0 if channels == 1 else 0x00
    head = bytes([0xFF, 0xFB, (index << 4) | (RATE_INDEX_48K << 2), mode])
    return head, frame_bytes(BITRATES[index]), side


def toc(frames: int, info_bytes: int, audio_frame_bytes: int) -> bytes:
    """The 100-byte seek TOC ffmpeg writes for `frames` audio frames of
    `audio_frame_bytes` each behind an Info frame of `info_bytes`: byte positions sampled
    every `want` frames into 400 bags (halved, `want` doubled, when full), entry `i` the
    bag `i * used / 100` as a fraction of the size, in 256ths."""
    bag = [0] * _BAGS
    pos, want, done = 0, 1, 0
    while frames - done >= want:
        done += want
        bag[pos] = info_bytes + done * audio_frame_bytes
        pos += 1
        if pos == _BAGS:
            for i in range(1, _BAGS, 2):
                bag[i >> 1] = bag[i]
            want *= 2
            pos = _BAGS // 2
    size = info_bytes + frames * audio_frame_bytes
    return bytes([0] + [min(256 * bag[i * pos // 100] // size, 255) for i in range(1, 100)])


def info_head(frames: int, mp3_bitrate: int, channels: int, n_samples: int,
              music_crc: int) -> bytes:
    """The bytes before the audio of a final track of `frames` audio frames (CBR
    `mp3_bitrate` kbit/s, `channels` 1 or 2) that decodes to exactly `n_samples` samples
    per channel (delay ENCODER_DELAY, padding the rest), whose frames' CRC-16/ARC is
    `music_crc`: the empty ID3v2 tag, then the Info frame. Raises ValueError when the
    frames cannot hold the samples (padding outside 0..4095)."""
    head, size, side = _header(mp3_bitrate, channels)
    padding = frames * FRAME - ENCODER_DELAY - n_samples
    if not 0 <= padding < 4096:
        raise ValueError(f"{frames} frames cannot hold {n_samples} samples (padding "
                         f"{padding})")
    # the Xing and LAME byte counts are 32-bit fields: past 4 GiB (30 h at 320 kbit/s)
    # they hold the count modulo 2**32, as ffmpeg's muxer writes them (avio_wb32)
    total = (size + frames * frame_bytes(mp3_bitrate)) & 0xFFFFFFFF
    frame = bytearray(size)
    frame[0:4] = head
    at = 4 + side
    frame[at: at + 16] = b"Info" + (0x0F).to_bytes(4, "big") + frames.to_bytes(4, "big") \
        + total.to_bytes(4, "big")
    frame[at + 16: at + 116] = toc(frames, size, frame_bytes(mp3_bitrate))
    lame = at + XING_BYTES
    frame[lame: lame + 4] = b"Lavf"
    frame[lame + 21: lame + 24] = ((ENCODER_DELAY << 12) | padding).to_bytes(3, "big")
    frame[lame + 28: lame + 32] = total.to_bytes(4, "big")
    frame[lame + 32: lame + 34] = music_crc.to_bytes(2, "big")
    frame[lame + 34: lame + 36] = crc16(bytes(frame[: lame + 34])).to_bytes(2, "big")
    return ID3V2_EMPTY + bytes(frame)
