"""An Opus decoder on libopus through ctypes: 20 ms packets in, s16le stereo samples out.

discord.py's `discord.opus.Decoder` wraps the same library but copies every decoded frame
through a Python list; promotion decodes a whole session (180 000 packets per speaker-hour),
so this module decodes straight into a caller's numpy buffer. API: libopus `opus_defines.h`
and `opus.h` (opus_decoder_create, opus_decode, opus_decoder_destroy, opus_strerror,
opus_decoder_get_size). ctypes releases the GIL during each call, so speakers decode in
parallel threads.

Runs of silence frames are most of a session (every slot a speaker is quiet or absent).
`opus_decode` is a pure function of (decoder state, packet) and a decoder state is one
relocatable block of `opus_decoder_get_size()` bytes (that is what `opus_decoder_init` on
caller memory relies on). So once decoding the silence frame leaves the state bytes
unchanged and yields only zeros, every further silence frame must do the same: the decoder
has reached a fixed point, and the rest of the run is written as zeros without calling
libopus. The output is bit-identical to decoding every frame (tests check it).

A packet libopus rejects raises OpusDecodeError, unless the decoder conceals (`conceal`,
what promotion uses): then that 20 ms slot is libopus's packet loss concealment (opus.h:
`opus_decode` with no data, as for a lost packet; zeros if even that fails), the stream
goes on, and `concealed` counts the slots. Promotion reads only raw objects whose sha256
is the one their chunk's Job verified, so such a packet is a decoder fault on data that
was accepted, and concealing one slot loses 20 ms where failing would lose the meeting or
the chunk; the count goes into `final/manifest.json` (`concealedFrames`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import numpy as np

from voicetrack.audio import CHANNELS, FRAME_SAMPLES, OPUS_SILENCE_FRAME, SAMPLE_RATE


class OpusDecodeError(ValueError):
    """libopus rejected a packet (corrupt data); the message has libopus's reason."""


@cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("opus") or "libopus.so.0"
    lib = ctypes.CDLL(name)
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_int)]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    lib.opus_decoder_get_size.restype = ctypes.c_int
    lib.opus_decoder_get_size.argtypes = [ctypes.c_int]
    return lib


class OpusDecoder:
    """One libopus decoder state (48 kHz, `channels` 1 or 2): feed packets in stream order.

    The state carries history from packet to packet, which is why promotion keeps one
    decoder per speaker for the whole session (DESIGN.md, "Raw chunk format"). For
    mono-coded packets a mono decoder returns the left channel a stereo one gives (see
    `voicetrack.audio.opus_channels`); stereo-coded packets are down-mixed (opus.h,
    opus_decoder_create).
    """

    def __init__(self, channels: int = CHANNELS, conceal: bool = False) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        lib = _lib()
        err = ctypes.c_int(0)
        self.channels = channels
        self.conceal = conceal
        """Conceal a packet libopus rejects (one 20 ms slot) instead of raising."""
        self.concealed = 0
        """Slots concealed so far (only with `conceal`)."""
        state = lib.opus_decoder_create(SAMPLE_RATE, channels, ctypes.byref(err))
        if err.value != 0 or not state:
            raise RuntimeError(f"opus_decoder_create: {lib.opus_strerror(err.value)!r}")
        self._state: int | None = state
        self._size = lib.opus_decoder_get_size(channels)
        self._settled = False
        """True when the state is a fixed point of decoding the silence frame."""

    def decode_into(self, packets: list[bytes], out: np.ndarray) -> int:
        """Decode `packets` in order into `out` (int16, shape (n, channels), C-contiguous).

        Returns samples per channel written. Every packet must decode to at most what is
        left of `out`. Raises OpusDecodeError naming the packet's position for a packet
        libopus rejects, unless the decoder conceals it (`conceal`: one 20 ms slot of
        packet loss concealment, counted in `concealed`).
        """
        channels = self.channels
        if out.dtype != np.int16 or out.ndim != 2 or out.shape[1] != channels \
                or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous int16 array of shape (n, {channels})")
        state = self._state
        if state is None:
            raise ValueError("decoder is closed")
        lib = _lib()
        base = out.ctypes.data
        pos = 0
        capacity = out.shape[0]
        for i, packet in enumerate(packets):
            silence = packet == OPUS_SILENCE_FRAME
            if silence and self._settled and capacity - pos >= FRAME_SAMPLES:
                out[pos:pos + FRAME_SAMPLES] = 0
                pos += FRAME_SAMPLES
                continue
            before = ctypes.string_at(state, self._size) if silence else b""
            room = min(capacity - pos, 120 * SAMPLE_RATE // 1000)
            n = lib.opus_decode(state, packet, len(packet), base + pos * 2 * channels,
                                room, 0)
            if n < 0:
                self._settled = False
                if not self.conceal or room < FRAME_SAMPLES:
                    raise OpusDecodeError(
                        f"packet {i}: {lib.opus_strerror(n).decode(errors='replace')}")
                n = self._conceal(state, base + pos * 2 * channels, out[pos:pos + FRAME_SAMPLES])
            self._settled = silence and n == FRAME_SAMPLES \
                and not out[pos:pos + n].any() \
                and ctypes.string_at(state, self._size) == before
            pos += n
        return pos

    def _conceal(self, state: int, at: int, slot: np.ndarray) -> int:
        """One slot (20 ms) of libopus's packet loss concealment written at address `at`
        (the start of `slot`), zeros when libopus refuses even that; counted. Returns the
        samples per channel written (`FRAME_SAMPLES`)."""
        self.concealed += 1
        if _lib().opus_decode(state, None, 0, at, FRAME_SAMPLES, 0) != FRAME_SAMPLES:
            slot[:] = 0
        return FRAME_SAMPLES

    def decode(self, packets: list[bytes]) -> np.ndarray:
        """Decode 20 ms packets into a new (n, channels) int16 array (n = 960 per packet)."""
        out = np.empty((len(packets) * FRAME_SAMPLES, self.channels), dtype=np.int16)
        n = self.decode_into(packets, out)
        return out[:n]

    def close(self) -> None:
        if self._state is not None:
            _lib().opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()
