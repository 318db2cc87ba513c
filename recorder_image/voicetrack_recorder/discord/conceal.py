"""Loss recovery: Opus in-band FEC and packet loss concealment, re-encoded to Opus.

The raw track stores Opus packets, so a recovered frame must be an Opus packet too. For a
run of `n` lost frames followed by a good packet `P` (at most `max_frames`; longer runs stay
silent, since concealment fades to silence within ~100 ms anyway), a decoder brought into
step by replaying the speaker's last few packets produces the lost audio: PLC for frames 1..n-1 and,
for frame n, FEC from `P`'s LBRR data when `P` is a SILK or hybrid packet (RFC 6716 §2.1.7,
§3.1: configs 0..15; CELT-only packets carry no FEC) or PLC otherwise. That PCM is encoded
by a fresh libopus encoder (coding mono when the speaker's packets are mono-coded, so the
track stays mono-coded), first fed the speaker's last `warmup_frames` decoded frames (so
its inter-frame prediction starts where the speaker's stream is; measured: error energy of a
rebuilt single frame drops from ~14 % to ~1 % of the signal going from 1 to 3 warm-up
frames) and shifted by the encoder's look-ahead (312 samples at 48 kHz for the `audio`
application: `Fs/400 + Fs/250`, libopus `opus_encoder.c`; any other shift is measurably
worse), so each new packet decodes to its own slot's audio, not 6.5 ms later.
The packets received are never altered; only missing slots get new packets. libopus comes
through discord.py's bindings (`discord.opus`).

A rebuild costs ~2.4 ms of CPU (a fresh decoder and encoder) against ~0.04 ms for a packet
received whole, and the sender chooses the sequence numbers. So frames are rebuilt only
when the RTP timestamps agree with the sequence numbers (the good packet's timestamp is
exactly `(lost + 1) * 960` past the last one's: the lost frames are the slots just before
it; after a pause, or from a sender that skips sequence numbers, they are not), and at most
REBUILDS_PER_S times a second per stream (a burst of REBUILD_BURST).
"""

from __future__ import annotations

from collections import Counter, deque

from discord import opus

from voicetrack.audio import CHANNELS, FRAME_SAMPLES, opus_channels
from voicetrack_recorder.discord.rtp import ts_diff
from voicetrack_recorder.opusenc import code_as_mono

REBUILDS_PER_S = 5.0
"""Rebuilds a stream earns per second (5 % loss in single frames is 2.5 a second)."""
REBUILD_BURST = 5.0
"""Rebuilds a stream may spend at once (its bucket's size)."""
LOOKAHEAD = 312
"""libopus encoder look-ahead at 48 kHz, application `audio`, in samples per channel."""
_BYTES_PER_SAMPLE = 2 * CHANNELS
_FRAME_BYTES = FRAME_SAMPLES * _BYTES_PER_SAMPLE


def has_fec(packet: bytes) -> bool:
    """True when `packet`'s mode (TOC config < 16: SILK or hybrid) can carry in-band FEC."""
    return bool(packet) and packet[0] >> 3 < 16


class Concealer:
    """Rebuilds lost frames of one speaker stream from the packets around them.

    The stream's last `warmup_frames + 2` good packets are kept; on a loss a fresh libopus
    decoder replays them (a decoder's state converges within a few frames), conceals the
    lost frames and decodes the packet after them. Nothing is decoded while no packet is
    lost, so the common case costs nothing. `recovered`, `fec` and `plc` count rebuilt
    frames (all, by FEC, by PLC); `errors` counts packets libopus refused to decode;
    `skipped` (shared with the receiver's stats when given) the loss runs not rebuilt, by
    cause: `timestamp_gap` (timestamps disagree with the run) and `rate` (the stream spent
    its REBUILDS_PER_S).
    """

    def __init__(self, max_frames: int = 3, bitrate_kbps: int = 64,
                 warmup_frames: int = 3, skipped: Counter[str] | None = None) -> None:
        self.max_frames = max_frames
        self.bitrate_kbps = bitrate_kbps
        self.warmup_frames = warmup_frames
        self._history: deque[bytes] = deque(maxlen=warmup_frames + 2)
        self._timestamp: int | None = None
        self._tokens = REBUILD_BURST
        self._tokens_ms: float | None = None
        self.recovered = self.fec = self.plc = self.errors = 0
        self.skipped: Counter[str] = Counter() if skipped is None else skipped

    def _frame(self, pcm: bytes) -> bytes:
        """`pcm` cut or zero-padded to one 20 ms stereo frame."""
        return pcm[:_FRAME_BYTES].ljust(_FRAME_BYTES, b"\0")

    def feed(self, packet: bytes, lost_before: int, timestamp: int,
             now_ms: float) -> list[bytes]:
        """Take `packet` (the next good one, in order; RTP `timestamp`, arrived at `now_ms`
        Unix ms) and return Opus packets for the `lost_before` frames missing just before
        it: `lost_before` packets, or none when the run is longer than `max_frames`, no
        packet came before, the timestamps disagree, the stream is over its rebuild rate,
        or libopus fails."""
        rebuilt: list[bytes] = []
        if (0 < lost_before <= self.max_frames and self._history
                and self._cause_to_skip(lost_before, timestamp, now_ms) is None):
            try:
                rebuilt = self._rebuild(packet, lost_before)
            except opus.OpusError:
                self.errors += 1
        self._history.append(packet)
        self._timestamp = timestamp
        return rebuilt

    def _cause_to_skip(self, lost: int, timestamp: int, now_ms: float) -> str | None:
        """Why a run of `lost` frames before the packet at `timestamp` is not rebuilt
        (counted in `skipped`), or None when it is (a token spent)."""
        last = self._timestamp
        if last is None or ts_diff(timestamp, last) != (lost + 1) * FRAME_SAMPLES:
            cause = "timestamp_gap"
        else:
            since = 0.0 if self._tokens_ms is None else max(0.0, now_ms - self._tokens_ms)
            self._tokens = min(REBUILD_BURST, self._tokens + since * REBUILDS_PER_S / 1000)
            self._tokens_ms = now_ms
            if self._tokens < 1:
                cause = "rate"
            else:
                self._tokens -= 1
                return None
        self.skipped[cause] += 1
        return cause

    def _rebuild(self, packet: bytes, lost: int) -> list[bytes]:
        dec = opus.Decoder()
        history = [self._frame(dec.decode(p, fec=False)) for p in self._history]
        lost_pcm = [self._frame(dec.decode(None, fec=False)) for _ in range(lost - 1)]
        if has_fec(packet):
            lost_pcm.append(self._frame(dec.decode(packet, fec=True)))
        else:
            lost_pcm.append(self._frame(dec.decode(None, fec=False)))
        after = self._frame(dec.decode(packet, fec=False))
        mono = opus_channels([*self._history, packet]) == 1
        out = self._encode(b"".join(history[-self.warmup_frames:]), lost_pcm, after, mono)
        fec = 1 if has_fec(packet) else 0
        self.fec += fec
        self.plc += lost - fec
        self.recovered += len(out)
        return out

    def _encode(self, before: bytes, lost: list[bytes], after: bytes, mono: bool
                ) -> list[bytes]:
        enc = opus.Encoder(application="audio", bitrate=self.bitrate_kbps, fec=False)
        if mono:
            code_as_mono(enc)
        signal = before + b"".join(lost) + after
        shift = LOOKAHEAD * _BYTES_PER_SAMPLE
        out = []
        warmup = len(before) // _FRAME_BYTES
        for k in range(warmup + len(lost)):
            start = k * _FRAME_BYTES + shift
            frame = signal[start:start + _FRAME_BYTES]
            packet = enc.encode(frame, FRAME_SAMPLES)
            if k >= warmup:  # the history frames only warm the encoder up
                out.append(packet)
        return out
