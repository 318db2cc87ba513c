"""Placing a speaker's frames on the session's 20 ms slot grid.

The first packet of a speaker's stream is anchored to session wall-clock time: its 20 ms of
audio had been captured by the time it arrived, so it is placed at the slot holding
`arrival - 20 ms` (the remaining bias is the network latency, unknowable to a receiver and
tens of ms on Discord, rounded down to the slot boundary); after that its RTP timestamp
places each frame (960 ticks per 20 ms slot at 48 kHz, RFC 7587 §4.1), so network jitter
never moves audio and a lost stretch leaves a gap of the right length instead of pulling
later audio earlier. The anchor is kept across
transport reconnects and DAVE epoch changes (neither touches RTP timestamps). It is renewed
only when the stream changes (a new SSRC for the user: rejoin, new client) or when the
RTP-derived slot and the arrival slot disagree by more than `resync_ms` (a sender whose
timestamps jumped or stalled); a renewed anchor never goes back before the speaker's last
placed slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicetrack.audio import FRAME_MS, FRAME_SAMPLES
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.rtp import ts_diff


@dataclass(slots=True)
class _Anchor:
    ssrc: int
    timestamp: int
    slot: int


class Timeline:
    """Slots for every speaker of one session. `resyncs` counts renewed anchors."""

    def __init__(self, clock: SessionClock, resync_ms: int = 500) -> None:
        if resync_ms < FRAME_MS:
            raise ValueError("resync_ms must be at least one frame (20 ms)")
        self.clock = clock
        self.resync_slots = resync_ms // FRAME_MS
        self.resyncs = 0
        self._anchors: dict[str, _Anchor] = {}
        self.last_slot: dict[str, int] = {}

    def slot(self, user_id: str, ssrc: int, timestamp: int, arrival_ms: float) -> int:
        """The slot of the frame with RTP `timestamp` on `ssrc` of `user_id` that arrived
        at `arrival_ms` (Unix ms). Does not record it: see `placed`. A first packet (or
        one that renews the anchor) is placed at the slot of `arrival_ms - 20`."""
        arrival_slot = self.clock.slot_at(arrival_ms - FRAME_MS)
        anchor = self._anchors.get(user_id)
        if anchor is not None and anchor.ssrc == ssrc:
            slot = anchor.slot + round(ts_diff(timestamp, anchor.timestamp) / FRAME_SAMPLES)
            if abs(arrival_slot - slot) <= self.resync_slots:
                return slot
            self.resyncs += 1
        start = arrival_slot
        last = self.last_slot.get(user_id)
        if last is not None and start <= last:
            start = last + 1
        self._anchors[user_id] = _Anchor(ssrc, timestamp, start)
        return start

    def placed(self, user_id: str, slot: int) -> None:
        """Record that `user_id` has a frame at `slot` (keeps re-anchoring monotonic)."""
        if slot > self.last_slot.get(user_id, slot - 1):
            self.last_slot[user_id] = slot
