"""The receive pipeline's counters (`VoiceReceiver.stats`), logged as JSON when a
recording stops and read by the benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from voicetrack_recorder.discord.dave import UserDecryptStats


@dataclass
class ReceiveStats:
    """Counters of one receiver. `dropped` is keyed by cause: `not_rtp`, `rtcp`, `video`,
    `payload_type`, `no_key`, `unknown_ssrc`, `transport_<cause>`, `opted_out` (consent:
    dropped before DAVE decryption), `late`, `duplicate`, `opus_invalid` (DAVE opened it
    but it is no well-formed 20 ms Opus packet: `opuspacket.is_one_slot`; also counted
    in `lost` and concealed), `overlap` (a slot the speaker already filled), `sink` (the
    chunker refused it)."""

    datagrams: int = 0
    frames: int = 0
    """Opus frames pushed to the sink (received and rebuilt)."""
    recovered: int = 0
    """Frames rebuilt by FEC/PLC among `frames`."""
    fec: int = 0
    """Frames among `recovered` rebuilt from the next packet's in-band FEC data."""
    identified: int = 0
    """SSRCs mapped by the DAVE key that opened their frames (no SPEAKING event)."""
    lost: int = 0
    """Sequence numbers that never arrived in time, plus frames DAVE refused."""
    unconcealed: Counter[str] = field(default_factory=Counter)
    """Short loss runs not rebuilt, by cause (`Concealer.skipped`)."""
    dropped: Counter[str] = field(default_factory=Counter)
    frames_by_user: Counter[str] = field(default_factory=Counter)
    decrypt: dict[str, UserDecryptStats] = field(default_factory=dict)
    """DAVE results per user id (the receiver's `DaveDecryptor.stats`)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: every counter, DAVE results per user and cause."""
        return {
            "datagrams": self.datagrams, "frames": self.frames,
            "recovered": self.recovered, "fec": self.fec,
            "identified": self.identified,
            "lost": self.lost, "unconcealed": dict(self.unconcealed),
            "dropped": dict(self.dropped),
            "framesByUser": dict(self.frames_by_user),
            "decrypt": {user: {"decrypted": s.decrypted, "silence": s.silence,
                               "plain": s.plain, "failures": dict(s.failures)}
                        for user, s in self.decrypt.items()},
        }
