"""The LAME Info tag of a Voicetrack MP3 track, read and checked: its one home for the CLI
(`voicetrack recordings download --live`) and the transcoder, which writes it
(`voicetrack_transcoder.infotag.info_head`, with `crc16` from here).

A track (live or final) is the empty ID3v2.4 tag ffmpeg's muxer writes (`ID3V2_EMPTY`,
20 bytes), then the Info frame, then the audio frames. The Info frame ("Mp3 Info Tag rev
1 specifications", gabriel.mp3-tech.org/mp3infotag.html): a 4-byte MPEG-1 Layer III
header (48 kHz, no CRC, no padding bit; its bitrate gives the frame's length,
`144000 * kbit/s / 48000` bytes), the side information (17 bytes mono, 32 otherwise),
then `Info`, flags, frame count, byte count (the Info frame and the audio, modulo 2**32),
the 100-byte TOC and the quality (120 bytes in all), then the 36-byte LAME extension,
whose bytes 28-31 are the music length (the byte count again), 32-33 the music CRC
(CRC-16/ARC of every byte after the Info frame) and 34-35 the tag CRC (CRC-16/ARC of the
frame's bytes before it); the frame's bytes after the extension are zero. So a reader can
check a track it did not hash beforehand: the tag CRC and the zeros cover the Info
frame, the music CRC and the byte count the audio. A CRC-16 catches every single-bit
error and every burst of up to 16 bits; other damage gets past one time in 65 536 (not
a defence against a forger, who can recompute it).
"""

from __future__ import annotations

import anycrc

ID3V2_EMPTY = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10)
"""The ID3v2.4 tag ffmpeg's mp3 muxer writes with `+bitexact` and no metadata: a header
giving 10 bytes of padding, then the padding."""

BITRATES = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
"""MPEG-1 Layer III bitrates (kbit/s) by header index (ISO/IEC 11172-3 §2.4.2.3)."""
RATE_INDEX_48K = 1
"""The header's sampling-frequency index of 48 kHz (MPEG-1)."""
XING_BYTES = 4 + 4 + 4 + 4 + 100 + 4
"""`Info`, flags, frames, bytes, TOC, quality."""
LAME_BYTES = 36
"""The LAME extension, through the tag CRC."""

_CRC16_ARC = anycrc.CRC(width=16, poly=0x8005, init=0, refin=True, refout=True, xorout=0)
"""CRC-16/ARC (poly 0x8005 reflected, init 0; check value 0xBB3D), the LAME tag's CRC."""


def crc16(data: bytes, start: int = 0) -> int:
    """CRC-16/ARC of `data` (0..0xFFFF), continued from `start` (the CRC of the bytes
    before it)."""
    return _CRC16_ARC.calc(data, start) if data else start


def side_info_bytes(channels: int) -> int:
    """Bytes of MPEG-1 Layer III side information: 17 for 1 channel, 32 for 2."""
    return 17 if channels == 1 else 32


class LameCheck:
    """A streaming check of one MP3 track against its LAME Info tag: feed its bytes in
    order with `update`, then `verdict()`. Holds at most the ID3 tag and the Info frame
    (under 1.5 KiB); the rest is only run through the CRC."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._frame_end: int | None = None  # offset of the first audio byte, once known
        self._why: str | None = None
        self._music = 0
        self._audio = 0

    def update(self, data: bytes) -> None:
        """Continue over `data`, the next bytes of the track."""
        if self._why is not None or not data:
            return
        if self._frame_end is None or len(self._head) < self._frame_end:
            self._head += data
            if self._frame_end is None and len(self._head) >= len(ID3V2_EMPTY) + 4:
                self._frame_end = self._parse_header()
                if self._frame_end is None:
                    return
            if self._frame_end is None or len(self._head) < self._frame_end:
                return
            data = bytes(self._head[self._frame_end:])
            del self._head[self._frame_end:]
        self._music = crc16(data, self._music)
        self._audio += len(data)

    def _parse_header(self) -> int | None:
        """The Info frame's end offset from its header; None (and the reason kept) when
        the track does not start as a Voicetrack track does."""
        if bytes(self._head[:len(ID3V2_EMPTY)]) != ID3V2_EMPTY:
            self._why = "does not start with the empty ID3v2.4 tag a Voicetrack track has"
            return None
        b1, b2 = self._head[len(ID3V2_EMPTY) + 1], self._head[len(ID3V2_EMPTY) + 2]
        index = b2 >> 4
        if (self._head[len(ID3V2_EMPTY)] != 0xFF or b1 != 0xFB or index in (0, 15)
                or (b2 >> 2) & 3 != RATE_INDEX_48K or b2 & 2):
            self._why = ("its Info frame's header is not MPEG-1 Layer III at 48 kHz "
                         "without padding")
            return None
        return len(ID3V2_EMPTY) + 144_000 * BITRATES[index] // 48_000

    def verdict(self) -> str | None:
        """None when every byte fed matches the Info tag (tag CRC, zeros after it, byte
        count and music length, music CRC); else why not (str)."""
        if self._why is not None:
            return self._why
        if self._frame_end is None or len(self._head) < self._frame_end:
            return f"{len(self._head)} bytes: shorter than its ID3 tag and Info frame"
        frame = bytes(self._head[len(ID3V2_EMPTY):])
        xing = 4 + side_info_bytes(1 if frame[3] >> 6 == 3 else 2)
        lame = xing + XING_BYTES
        if lame + LAME_BYTES > len(frame) or frame[xing: xing + 4] != b"Info":
            return "its first frame is not a LAME Info frame"
        stored = int.from_bytes(frame[lame + 34: lame + 36], "big")
        if crc16(frame[: lame + 34]) != stored:
            return (f"Info frame CRC-16 {crc16(frame[: lame + 34]):04x}, its LAME tag "
                    f"says {stored:04x} (the Info frame is damaged)")
        if any(frame[lame + LAME_BYTES:]):
            return ("its Info frame's bytes after the LAME tag are not zero, as the "
                    "transcoder writes them (the Info frame is damaged)")
        total = (len(frame) + self._audio) & 0xFFFFFFFF
        for name, at in (("Info byte count", xing + 12), ("LAME music length", lame + 28)):
            said = int.from_bytes(frame[at: at + 4], "big")
            if said != total:
                return (f"{len(frame) + self._audio} bytes of Info frame and audio, its "
                        f"{name} says {said}")
        music = int.from_bytes(frame[lame + 32: lame + 34], "big")
        if self._music != music:
            return (f"audio CRC-16 {self._music:04x}, its LAME music CRC says {music:04x} "
                    "(the audio is damaged)")
        return None
