"""FLAC frames as bytes (RFC 9639): the checksums, the frame header, the coded number, and
the few pieces of a FLAC file that incremental promotion (`flacpieces.py`) builds itself.

FLAC frames are independent (RFC 9639 §9: each frame header carries the block size, the
sample rate, the channels and the bit depth, and no frame refers to another), so a stream
can be joined from frames encoded separately, provided every frame header says where its
samples are. A run of frames from ffmpeg is a fixed-blocksize stream numbered from frame 0
(§9.1: blocking strategy bit 0, the coded number a frame number); `renumber` rewrites
each header to a variable-blocksize one (blocking strategy bit 1, the coded number the
frame's first sample in the final track, §9.1.5), recomputing the header's CRC-8 (§9.1.8)
and the frame's CRC-16 (§9.3). The frame's body (subframes, padding) is not touched.

Frame boundaries (`frames_of`): a frame starts with the sync code (§9.1: 0b11111111111110,
then a reserved 0 bit and the stream's blocking strategy bit), a header that parses, whose
CRC-8 is right and whose coded number is the one the previous frame leads to (frame
number + 1, or sample number + block size), with the first frame's sample rate, channels
and bit depth, and the frame before it ends with its right CRC-16 (§9.3). A sync code
inside a frame's body would have to pass all of that to be taken for a frame; the last
frame's CRC-16 must be right too. The caller checks the total samples it expects.

The CRC-16 of a renumbered frame is derived from the old one, not computed over the body:
CRC-16 (poly 0x8005, init 0, no reflection, §9.3) is linear over GF(2), so with the frame
`H || B` (header H, body B without the CRC), `crc(H' || B) = crc(H || B) xor
(crc(H) xor crc(H')) * x^(8 |B|) mod P` (H, H' as polynomials; a shorter or longer H'
changes nothing in that identity). That costs one multiplication per frame instead of a
pass over its bytes, and is exact when the old CRC was right (the frames come from
ffmpeg, verified by sha256 before use).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SYNC = 0xFFF8
"""The frame sync code (14 bits) and the reserved bit 0, as the first 15 bits of a frame
header; the 16th bit is the blocking strategy (RFC 9639 §9.1)."""
BLOCK = 4608
"""Samples per frame of the silent frames made here (ffmpeg's FLAC encoder uses the same
size at 48 kHz)."""
RATE_48K = 0b1010
"""Sample-rate code of 48 kHz in a frame header (§9.1.2)."""
DEPTH_16 = 0b100
"""Bit-depth code of 16 bits per sample in a frame header (§9.1.4)."""
STREAMINFO_BYTES = 4 + 4 + 34
"""`fLaC`, one metadata block header and the STREAMINFO block (§7, §8.1, §8.2)."""


def _table(poly: int, width: int) -> list[int]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    out = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & top else crc << 1
        out.append(crc & mask)
    return out


_CRC8 = _table(0x07, 8)
_CRC16 = _table(0x8005, 16)


def crc8(data: bytes) -> int:
    """CRC-8 of a frame header (RFC 9639 §9.1.8): poly x^8+x^2+x+1 (0x07), init 0, MSB
    first, no final xor. `crc8(b"123456789") == 0xF4`."""
    crc = 0
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc


def crc16(data: bytes) -> int:
    """CRC-16 of a frame (RFC 9639 §9.3): poly x^16+x^15+x^2+1 (0x8005), init 0, MSB
    first, no final xor (CRC-16/UMTS). `crc16(b"123456789") == 0xFEE8`. Pure Python: for
    headers and tests; frames are renumbered without it (module docstring)."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ b]
    return crc


def _mulmod(a: int, b: int) -> int:
    """a * b mod (x^16 + 0x8005) over GF(2), both of degree < 16."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
        if a & 0x10000:
            a ^= 0x18005
    return out


_X8_POW2 = [0x100]  # x^(8 * 2^k) mod P
for _ in range(40):
    _X8_POW2.append(_mulmod(_X8_POW2[-1], _X8_POW2[-1]))


def crc16_shift(crc: int, nbytes: int) -> int:
    """`crc * x^(8 nbytes) mod P`: what a CRC-16 difference at the head of a message
    becomes after `nbytes` more bytes (module docstring). `nbytes` < 2^40."""
    k = 0
    while nbytes:
        if nbytes & 1:
            crc = _mulmod(crc, _X8_POW2[k])
        nbytes >>= 1
        k += 1
    return crc


def encode_number(value: int) -> bytes:
    """The coded number of a frame header (RFC 9639 §9.1.5): UTF-8's scheme extended to
    36 bits (7 bytes: 0xFE then six 10xxxxxx bytes). Raises ValueError outside
    [0, 2^36)."""
    if not 0 <= value < 1 << 36:
        raise ValueError(f"coded number {value} outside [0, 2^36)")
    if value < 0x80:
        return bytes([value])
    for n in range(2, 8):  # n bytes carry 5n + 1 bits (7 bytes: 36)
        if value < 1 << (5 * n + 1):
            break
    tail = [0x80 | ((value >> (6 * i)) & 0x3F) for i in range(n - 2, -1, -1)]
    lead = ((0xFF00 >> n) & 0xFF) | (value >> (6 * (n - 1)))
    return bytes([lead & 0xFF, *tail])


def decode_number(data: bytes, at: int) -> tuple[int, int] | None:
    """(value, bytes used) of the coded number at `data[at]` (§9.1.5), None when it is
    not a valid coding (bad lead or continuation byte, or past the end)."""
    if at >= len(data):
        return None
    lead = data[at]
    if lead < 0x80:
        return lead, 1
    n = 0
    while n < 8 and lead & (0x80 >> n):
        n += 1
    if not 2 <= n <= 7 or at + n > len(data):
        return None
    value = lead & (0x7F >> n)
    for b in data[at + 1: at + n]:
        if b & 0xC0 != 0x80:
            return None
        value = (value << 6) | (b & 0x3F)
    return value, n


@dataclass(frozen=True)
class FrameHeader:
    """A parsed frame header (RFC 9639 §9.1): `variable` blocking strategy, `number`
    (frame number, or first sample when variable), `block` samples, `channels`, the
    codes of the sample rate and bit depth, `size` header bytes with the CRC-8, and
    `number_at`/`number_len` where the coded number sits in it."""

    variable: bool
    number: int
    block: int
    channels: int
    rate_code: int
    depth_code: int
    size: int
    number_at: int
    number_len: int


def _block_size(code: int, data: bytes, at: int) -> tuple[int, int] | None:
    """(block size, extra header bytes) for block-size `code` (§9.1.1)."""
    if code == 0:
        return None
    if code == 1:
        return 192, 0
    if code <= 5:
        return 144 << code, 0
    if code == 6:
        return (data[at] + 1, 1) if at < len(data) else None
    if code == 7:
        return (int.from_bytes(data[at: at + 2], "big") + 1, 2) \
            if at + 2 <= len(data) else None
    return 1 << code, 0


def parse_header(data: bytes, at: int) -> FrameHeader | None:
    """The frame header at `data[at]`, None unless it is one: sync code, reserved bits 0,
    known codes (§9.1.1 to §9.1.4), a valid coded number (§9.1.5), and a right CRC-8."""
    if at + 6 > len(data) or data[at] != 0xFF or data[at + 1] & 0xFE != 0xF8:
        return None
    variable = bool(data[at + 1] & 1)
    bs_code, rate_code = data[at + 2] >> 4, data[at + 2] & 0x0F
    ch_code, depth_code = data[at + 3] >> 4, (data[at + 3] >> 1) & 0x07
    if rate_code == 0x0F or ch_code > 10 or depth_code == 0b011 or data[at + 3] & 1:
        return None
    coded = decode_number(data, at + 4)
    if coded is None or (not variable and coded[1] > 6):
        return None
    number, number_len = coded
    pos = at + 4 + number_len
    block = _block_size(bs_code, data, pos)
    if block is None:
        return None
    pos += block[1]
    pos += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if pos >= len(data) or crc8(data[at:pos]) != data[pos]:
        return None
    return FrameHeader(variable, number, block[0], ch_code + 1 if ch_code < 8 else 2,
                       rate_code, depth_code, pos + 1 - at, 4, number_len)


@dataclass(frozen=True)
class Frame:
    """One frame: `data[start:end]`, its header parsed."""

    start: int
    end: int
    header: FrameHeader


def _crc_ok(data: bytes, start: int, end: int) -> bool:
    """Whether `data[start:end]` ends with the CRC-16 of the bytes before it."""
    return end - start > 2 and crc16(data[start: end - 2]) == int.from_bytes(
        data[end - 2: end], "big")


def frames_of(data: bytes, first_number: int | None = None) -> list[Frame]:
    """The frames of `data`, a run of whole frames of one stream (module docstring: how
    boundaries are found; every frame's CRC-16 is checked, about 10 MB/s). `first_number`:
    the coded number the first frame must have (None: any). Raises ValueError when `data`
    does not start with a frame header, or its last frame's CRC-16 is wrong."""
    first = parse_header(data, 0)
    if first is None or (first_number is not None and first.number != first_number):
        raise ValueError("no FLAC frame header at the start of the data")
    sync = bytes([0xFF, 0xF8 | first.variable])
    frames: list[Frame] = []
    start, head = 0, first
    while True:
        want = head.number + (head.block if head.variable else 1)
        at = data.find(sync, start + head.size)
        nxt = None
        while at != -1:
            nxt = parse_header(data, at)
            if nxt is not None and nxt.number == want and nxt.rate_code == first.rate_code \
                    and nxt.depth_code == first.depth_code \
                    and nxt.channels == first.channels and _crc_ok(data, start, at):
                break
            nxt = None
            at = data.find(sync, at + 1)
        if nxt is None and not _crc_ok(data, start, len(data)):
            raise ValueError(f"FLAC frame at byte {start}: its CRC-16 is wrong (or a frame "
                             "after it was not found)")
        frames.append(Frame(start, len(data) if nxt is None else at, head))
        if nxt is None:
            return frames
        start, head = at, nxt


def renumber(data: bytes, first_sample: int) -> tuple[bytes, list[int]]:
    """The frames of `data` (a run of one stream's frames, fixed or variable blocksize,
    numbered from 0 or from anything) rewritten as variable-blocksize frames whose first
    sample in the final track starts at `first_sample` (module docstring), and their block
    sizes. Raises ValueError when `data` is not a run of frames."""
    out = bytearray()
    blocks = []
    sample = first_sample
    for frame in frames_of(data):
        h = frame.header
        old_head = data[frame.start: frame.start + h.size]  # with its CRC-8
        new_head = bytearray(old_head[: h.number_at])
        new_head[1] |= 0x01
        new_head += encode_number(sample)
        new_head += old_head[h.number_at + h.number_len: -1]
        new_head.append(crc8(bytes(new_head)))
        body = frame.end - 2 - (frame.start + h.size)
        if body < 1:
            raise ValueError(f"FLAC frame at byte {frame.start} has no body")
        old_crc = int.from_bytes(data[frame.end - 2: frame.end], "big")
        crc = old_crc ^ crc16_shift(crc16(old_head) ^ crc16(bytes(new_head)), body)
        out += new_head
        out += data[frame.start + h.size: frame.end - 2]
        out += crc.to_bytes(2, "big")
        blocks.append(h.block)
        sample += h.block
    return bytes(out), blocks


def silent_frames(samples: int, channels: int, first_sample: int) -> tuple[bytes, list[int]]:
    """`samples` of digital silence as variable-blocksize frames of at most `BLOCK`
    samples from sample `first_sample`, each a CONSTANT subframe of 0 per channel
    (RFC 9639 §9.2.1, §9.2.3; channels independent, 48 kHz, 16 bits), and their block
    sizes. Raises ValueError for `samples` < 0 or a channel count outside 1..8."""
    if samples < 0 or not 1 <= channels <= 8:
        raise ValueError(f"{samples} samples of {channels} channel(s)")
    out = bytearray()
    blocks = []
    while samples:
        n = min(samples, BLOCK)
        head = bytes([0xFF, 0xF9, 0x70 | RATE_48K, ((channels - 1) << 4) | (DEPTH_16 << 1)])
        head += encode_number(first_sample) + (n - 1).to_bytes(2, "big")
        head += bytes([crc8(head)])
        frame = head + b"\x00\x00\x00" * channels  # subframe header 0: CONSTANT; 16-bit 0
        out += frame + crc16(frame).to_bytes(2, "big")
        blocks.append(n)
        first_sample += n
        samples -= n
    return bytes(out), blocks


def strip_head(data: bytes) -> bytes:
    """The frames of a FLAC file: what follows `fLaC` and its metadata blocks (§7, §8.1).
    Raises ValueError for data that is not a FLAC file."""
    if data[:4] != b"fLaC":
        raise ValueError("not a FLAC file")
    at = 4
    while True:
        if at + 4 > len(data):
            raise ValueError("FLAC metadata runs past the end")
        last, length = data[at] & 0x80, int.from_bytes(data[at + 1: at + 4], "big")
        at += 4 + length
        if last:
            return data[at:]


def stream_head(min_block: int, max_block: int, channels: int, total_samples: int) -> bytes:
    """`fLaC` and one STREAMINFO block, the last metadata block (RFC 9639 §8.1, §8.2):
    48 kHz, 16 bits, `channels`, `total_samples` per channel, the block sizes given, frame
    sizes 0 (unknown) and MD5 all zero (not computed), as §8.2 allows.
    `STREAMINFO_BYTES` long. Raises ValueError for values out of their fields."""
    if not (0 < min_block <= max_block < 1 << 16 and 1 <= channels <= 8
            and 0 <= total_samples < 1 << 36):
        raise ValueError(f"STREAMINFO {min_block}..{max_block}, {channels} channel(s), "
                         f"{total_samples} samples")
    fields = (48000 << 44) | ((channels - 1) << 41) | (15 << 36) | total_samples
    info = struct.pack(">HH", min_block, max_block) + bytes(6) + fields.to_bytes(8, "big")
    return b"fLaC" + bytes([0x80, 0, 0, 34]) + info + bytes(16)
