"""Is an Opus packet one a raw track can hold: well-formed and exactly 20 ms? The one rule
for the recorder (which refuses any other packet it receives, before loss concealment and
the sink) and the transcoder (whose raw-track check refuses a chunk holding one).

Every call member's client (a modified one too) chooses the Opus packets it sends; DAVE and
the transport AEAD prove only who sent them, and a raw object in S3 is only as sound as
whatever wrote it. The raw track holds one 20 ms packet per slot and everything downstream
(the spool's Ogg writer, the chunk transcode, the promotion's decoder) relies on that: a
packet that ffmpeg decodes a frame short but libopus refuses let a chunk pass as done and
then failed its meeting's promotion on every retry.

RFC 6716 §3 (packet organization): the first byte is the TOC (§3.1: `config` in the top 5
bits gives the mode and frame duration — SILK 10/20/40/60 ms, hybrid 10/20 ms, CELT
2.5/5/10/20 ms — then the stereo flag `s` and the frame-count code `c`); code 0 is one
frame, code 1 two frames of equal size, code 2 two frames with the first one's length
coded after the TOC (§3.2.1, one or two bytes), and code 3 carries a frame-count byte
(§3.2.5: VBR flag, padding flag, count M of 1..48 frames, total ≤ 120 ms) followed, when
the padding flag is set, by padding-length bytes that must fit in the packet. libopus's
`opus_packet_parse` applies every one of these rules (R1–R7, §3.4); the packet is kept
only when it parses and its frames add up to 960 samples at 48 kHz.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from voicetrack.audio import FRAME_SAMPLES, SAMPLE_RATE

_MAX_FRAMES = 48
"""RFC 6716 §3.2.5: a code-3 packet carries at most 48 frames."""


@functools.cache
def _lib() -> ctypes.CDLL:
    """The system's libopus (loaded on first use, as discord.py and the transcoder's
    decoder load it). Raises OSError when no libopus can be loaded."""
    lib = ctypes.CDLL(ctypes.util.find_library("opus") or "libopus.so.0")
    lib.opus_packet_parse.restype = ctypes.c_int
    lib.opus_packet_parse.argtypes = [
        ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_ubyte), ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_int16), ctypes.POINTER(ctypes.c_int)]
    lib.opus_packet_get_samples_per_frame.restype = ctypes.c_int
    lib.opus_packet_get_samples_per_frame.argtypes = [ctypes.c_char_p, ctypes.c_int32]
    return lib


MAX_FRAME_BYTES = 1275
"""RFC 6716 §3.2.1 and R2 of §3.4: no frame is longer than 1275 bytes."""


def toc_frame_samples(toc: int) -> int:
    """Samples per channel at 48 kHz of each frame of a packet whose TOC byte is `toc`
    (RFC 6716 §3.1, Table 2: `config` 0–11 SILK-only 10/20/40/60 ms, 12–15 hybrid
    10/20 ms, 16–31 CELT-only 2.5/5/10/20 ms); what libopus's
    `opus_packet_get_samples_per_frame` gives at 48 kHz."""
    config = toc >> 3
    if config < 12:
        return (480, 960, 1920, 2880)[config & 3]
    if config < 16:
        return (480, 960)[config & 1]
    return (120, 240, 480, 960)[config & 3]


def packet_samples(packet: bytes) -> int | None:
    """Samples per channel at 48 kHz that `packet` decodes to, or None when libopus's
    `opus_packet_parse` refuses it (empty, a code-3 packet without its frame-count byte,
    padding longer than the packet, frame lengths that do not add up: RFC 6716 §3.4).

    A code-0 packet (one frame, what Discord clients send) is judged here by the same
    rules (R1: at least the TOC byte; R2: a frame of at most MAX_FRAME_BYTES), sparing
    the recorder a ctypes call per received packet; codes 1–3 go to libopus."""
    if packet and not packet[0] & 3:
        return toc_frame_samples(packet[0]) if len(packet) - 1 <= MAX_FRAME_BYTES else None
    lib = _lib()
    sizes = (ctypes.c_int16 * _MAX_FRAMES)()
    toc = ctypes.c_ubyte()
    offset = ctypes.c_int()
    count = lib.opus_packet_parse(packet, len(packet), ctypes.byref(toc), None, sizes,
                                  ctypes.byref(offset))
    if count <= 0:
        return None
    per_frame = lib.opus_packet_get_samples_per_frame(packet, SAMPLE_RATE)
    return int(count) * int(per_frame)


def is_one_slot(packet: bytes) -> bool:
    """True when `packet` is a well-formed Opus packet lasting exactly 20 ms (960 samples
    at 48 kHz), the one length a raw track's slot holds."""
    return packet_samples(packet) == FRAME_SAMPLES
