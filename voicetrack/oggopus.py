"""Ogg Opus: the raw chunk format, written and read packet by packet.

A raw chunk is a complete Ogg Opus stream (RFC 7845) holding exactly the Opus packets of one
speaker's chunk window, one per 20 ms slot: the packet received for that slot or the Opus
silence frame. The header carries pre-skip 0, so decoding gives exactly
`slots * 960` samples per channel and chunk boundaries stay sample-exact. (Encoding through
an encoder library's Ogg muxer would add the encoder's pre-skip, 312 samples for libopus,
and shift every chunk by 6.5 ms.)

Sources: RFC 3533 (Ogg pages, CRC-32 with polynomial 0x04C11DB7), RFC 7845 §5 (OpusHead,
OpusTags, granule positions), RFC 6716 §3.1 (TOC byte and frame counts).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from voicetrack.audio import CHANNELS, SAMPLE_RATE
from voicetrack.opuspacket import toc_frame_samples

VENDOR = b"voicetrack"
_PAGE_HEADER = struct.Struct("<4sBBqIIIB")
_MAX_SEGMENTS = 255
_PACKETS_PER_PAGE = 50  # one second of 20 ms frames: pages stay small and seekable


class OggOpusError(ValueError):
    """A byte string is not a well-formed Ogg Opus stream; the message says where."""


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (RFC 3533 §6: polynomial 0x04C11DB7, no reflection, initial 0, no final
    XOR), computed in C by zlib: zlib's CRC-32 is the same polynomial bit-reflected, so
    reflecting every input byte and the 32-bit result gives Ogg's. `zlib.crc32(d, ~0)`
    starts the register at 0 and the final XOR with ~0 undoes zlib's own."""
    crc = zlib.crc32(data.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{crc:032b}"[::-1], 2)


def opus_packet_samples(packet: bytes) -> int:
    """Samples per channel at 48 kHz that one Opus packet decodes to (RFC 6716 §3.1).

    Raises OggOpusError for an empty packet or a malformed code-3 packet.
    """
    if not packet:
        raise OggOpusError("empty Opus packet")
    toc = packet[0]
    frame = toc_frame_samples(toc)
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            raise OggOpusError("code-3 Opus packet without a frame count byte")
        count = packet[1] & 0x3F
    return frame * count


def opus_head(channels: int = CHANNELS, pre_skip: int = 0) -> bytes:
    """The OpusHead identification header (RFC 7845 §5.1), mapping family 0."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, SAMPLE_RATE, 0, 0)


def opus_tags(vendor: bytes = VENDOR) -> bytes:
    """The OpusTags comment header (RFC 7845 §5.2) with no user comments."""
    return b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)


def _page(header_type: int, granule: int, serial: int, seq: int, packets: list[bytes],
          continued_last: bool = False) -> bytes:
    lacing = bytearray()
    for i, packet in enumerate(packets):
        n = len(packet)
        lacing.extend(b"\xff" * (n // 255))
        if not (continued_last and i == len(packets) - 1):
            lacing.append(n % 255)
    body = b"".join(packets)
    header = _PAGE_HEADER.pack(b"OggS", 0, header_type, granule, serial, seq, 0, len(lacing))
    page = bytearray(header + bytes(lacing) + body)
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def encode_ogg_opus(packets: Iterable[bytes], *, serial: int = 1,
                    channels: int = CHANNELS) -> bytes:
    """One complete Ogg Opus stream holding `packets` in order, pre-skip 0.

    Granule positions count samples per channel at 48 kHz up to the end of the last packet
    that ends on each page. Raises OggOpusError for an empty packet or a packet too large
    for one page (over 255 * 254 bytes; Opus packets are at most 1275 bytes per frame).
    """
    out = [
        _page(0x02, 0, serial, 0, [opus_head(channels)]),
        _page(0x00, 0, serial, 1, [opus_tags()]),
    ]
    seq = 2
    granule = 0
    batch: list[bytes] = []
    segments = 0
    pending = list(packets)
    for i, packet in enumerate(pending):
        need = len(packet) // 255 + 1
        if need > _MAX_SEGMENTS:
            raise OggOpusError(f"Opus packet of {len(packet)} bytes does not fit one page")
        if batch and (segments + need > _MAX_SEGMENTS or len(batch) >= _PACKETS_PER_PAGE):
            out.append(_page(0x00, granule, serial, seq, batch))
            seq += 1
            batch, segments = [], 0
        granule += opus_packet_samples(packet)
        batch.append(packet)
        segments += need
        if i == len(pending) - 1:
            out.append(_page(0x04, granule, serial, seq, batch))
            batch = []
    if batch or len(out) == 2:
        out.append(_page(0x04, granule, serial, seq, batch))
    return b"".join(out)


@dataclass
class OggOpusStream:
    """A parsed Ogg Opus stream: its header fields and audio packets in order."""

    channels: int
    pre_skip: int
    packets: list[bytes] = field(default_factory=list)
    granule: int = 0
    """The last page's granule position: samples per channel at 48 kHz, pre-skip included."""

    @property
    def samples(self) -> int:
        """Samples per channel the stream decodes to, after pre-skip."""
        return sum(opus_packet_samples(p) for p in self.packets) - self.pre_skip


def iter_ogg_packets(data: bytes, *, verify_crc: bool = True) -> Iterator[tuple[bytes, int]]:
    """Yield (packet, page granule position) for every packet of one logical Ogg stream.

    Raises OggOpusError naming the byte offset of a bad capture pattern, a truncated page,
    a CRC mismatch, or a packet left unfinished at the end of the stream.
    """
    pos = 0
    partial = b""
    while pos < len(data):
        if len(data) - pos < _PAGE_HEADER.size:
            raise OggOpusError(f"truncated Ogg page header at byte {pos}")
        capture, version, _type, granule, _serial, _seq, crc, nseg = _PAGE_HEADER.unpack_from(
            data, pos)
        if capture != b"OggS" or version != 0:
            raise OggOpusError(f"no Ogg page at byte {pos}")
        lacing = data[pos + _PAGE_HEADER.size: pos + _PAGE_HEADER.size + nseg]
        body_start = pos + _PAGE_HEADER.size + nseg
        end = body_start + sum(lacing)
        if len(lacing) != nseg or end > len(data):
            raise OggOpusError(f"truncated Ogg page at byte {pos}")
        if verify_crc:
            page = bytearray(data[pos:end])
            page[22:26] = b"\0\0\0\0"
            if ogg_crc(bytes(page)) != crc:
                raise OggOpusError(f"Ogg page CRC mismatch at byte {pos}")
        off = body_start
        for lace in lacing:
            partial += data[off: off + lace]
            off += lace
            if lace < 255:
                yield partial, granule
                partial = b""
        pos = end
    if partial:
        raise OggOpusError("stream ends inside a packet")


def decode_ogg_opus(data: bytes, *, verify_crc: bool = True) -> OggOpusStream:
    """Parse a whole Ogg Opus stream into its header fields and audio packets.

    Raises OggOpusError if the stream is empty, lacks OpusHead/OpusTags, or is malformed.
    """
    it = iter_ogg_packets(data, verify_crc=verify_crc)
    try:
        head, _ = next(it)
        tags, _ = next(it)
    except StopIteration:
        raise OggOpusError("stream has no OpusHead and OpusTags headers") from None
    if not head.startswith(b"OpusHead") or len(head) < 19:
        raise OggOpusError("first packet is not an OpusHead header")
    if not tags.startswith(b"OpusTags"):
        raise OggOpusError("second packet is not an OpusTags header")
    _version, channels, pre_skip = struct.unpack_from("<BBH", head, 8)
    stream = OggOpusStream(channels=channels, pre_skip=pre_skip)
    for packet, granule in it:
        if not packet:
            raise OggOpusError("empty Opus packet in stream")
        stream.packets.append(packet)
        stream.granule = granule
    return stream
