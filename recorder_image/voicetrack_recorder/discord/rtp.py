"""RTP packets as Discord voice sends them: header parsing and the wrap-safe arithmetic.

Sources: RFC 3550 §5.1 (fixed header: V=2, P, X, CC, M, PT, sequence, timestamp, SSRC, then
CC CSRC identifiers), §5.3.1 (header extension: 16-bit profile, 16-bit length in 32-bit
words, then the extension body); RFC 8285 §4.2 (the one-byte-header profile 0xBEDE Discord
uses). Discord voice audio is payload type 120 (0x78), 48 kHz, 960 timestamp ticks per
20 ms frame (Discord developer docs, "Voice Connections").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
FIXED_HEADER_BYTES = 12
EXTENSION_HEADER_BYTES = 4
AUDIO_PAYLOAD_TYPE = 0x78
"""Discord's Opus payload type (120)."""
RTCP_PAYLOAD_TYPES = range(200, 205)
"""RTCP packet types (RFC 3550 §12.1) whose second byte collides with M|PT: SR..APP."""


class RtpError(ValueError):
    """A datagram is not a well-formed RTP packet; the message names the field."""


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The parsed header of one RTP packet.

    `header_bytes` is the length of the fixed header plus CSRCs (and, when `has_extension`,
    the 4-byte extension header, whose body length is `extension_words * 4` bytes).
    `payload_offset` is where the payload starts in the packet when the extension body is
    in the clear (RFC 3550); in Discord's `*_rtpsize` modes the extension body is encrypted
    and starts the plaintext instead.
    """

    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    padding: bool
    has_extension: bool
    extension_profile: int
    extension_words: int
    header_bytes: int

    @property
    def payload_offset(self) -> int:
        """Byte offset of the payload when the extension body is in the clear."""
        return self.header_bytes + 4 * self.extension_words


def is_rtcp(data: bytes) -> bool:
    """True for an RTCP packet (version 2, packet type 200..204) sharing the socket."""
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and data[1] in RTCP_PAYLOAD_TYPES


def parse_rtp(data: bytes) -> RtpHeader:
    """Parse the RTP header at the start of `data` (one UDP datagram).

    Raises RtpError when the packet is shorter than its header claims or its version is
    not 2. The extension body is not read: in Discord's rtpsize modes it is ciphertext.
    """
    if len(data) < FIXED_HEADER_BYTES:
        raise RtpError(f"packet of {len(data)} bytes is shorter than the 12-byte RTP header")
    b0, b1, sequence, timestamp, ssrc = struct.unpack_from(">BBHII", data, 0)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version is {b0 >> 6}, not 2")
    cc = b0 & 0x0F
    end = FIXED_HEADER_BYTES + 4 * cc
    if len(data) < end:
        raise RtpError(f"packet of {len(data)} bytes is shorter than its {cc} CSRCs")
    csrcs = struct.unpack_from(f">{cc}I", data, FIXED_HEADER_BYTES) if cc else ()
    has_extension = bool(b0 & 0x10)
    profile = words = 0
    if has_extension:
        if len(data) < end + EXTENSION_HEADER_BYTES:
            raise RtpError("packet ends inside the RTP extension header")
        profile, words = struct.unpack_from(">HH", data, end)
        end += EXTENSION_HEADER_BYTES
    return RtpHeader(marker=bool(b1 & 0x80), payload_type=b1 & 0x7F, sequence=sequence,
                     timestamp=timestamp, ssrc=ssrc, csrcs=tuple(csrcs),
                     padding=bool(b0 & 0x20), has_extension=has_extension,
                     extension_profile=profile, extension_words=words, header_bytes=end)


def build_rtp_header(sequence: int, timestamp: int, ssrc: int, *,
                     payload_type: int = AUDIO_PAYLOAD_TYPE, marker: bool = False,
                     csrcs: tuple[int, ...] = (), extension_words: int = 0,
                     extension_profile: int = 0xBEDE) -> bytes:
    """The RTP header bytes (fixed header, CSRCs, and the 4-byte extension header when
    `extension_words` > 0; the extension body is the caller's, as in rtpsize modes)."""
    b0 = (RTP_VERSION << 6) | len(csrcs) | (0x10 if extension_words else 0)
    b1 = (0x80 if marker else 0) | payload_type
    out = struct.pack(">BBHII", b0, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    out += b"".join(struct.pack(">I", c) for c in csrcs)
    if extension_words:
        out += struct.pack(">HH", extension_profile, extension_words)
    return out


def seq_diff(a: int, b: int) -> int:
    """`a - b` for 16-bit RTP sequence numbers, wrap-safe: in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_diff(a: int, b: int) -> int:
    """`a - b` for 32-bit RTP timestamps, wrap-safe: in [-2**31, 2**31 - 1] ticks."""
    return ((a - b + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000
