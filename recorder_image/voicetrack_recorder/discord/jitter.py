"""Per-speaker jitter buffer by RTP sequence number (wrap-safe).

Packets of one SSRC come in the order the network delivers them; the buffer gives them back
in sequence order, each with the number of packets lost just before it. A packet is
released as soon as it is the next expected one; a missing packet is given up once the
oldest held packet has waited `max_delay_ms` or more than `depth` packets are held behind
it. Late packets (older than what was already released) and duplicates are refused and
counted by the caller. Source for the arithmetic: RFC 3550 §5.1 and Appendix A.1
(16-bit sequence numbers wrap; compare by signed difference).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from voicetrack_recorder.discord.rtp import seq_diff

RESET_SEQ_JUMP = 3000
"""A sequence jump this large (either way) means the sender restarted its stream."""


@dataclass(slots=True)
class Held:
    """One transport-decrypted packet waiting for release. `payload` is still DAVE-
    encrypted; `arrival_ms` is when it came off the socket (Unix ms); `opus` is set when
    the frame was already opened (to identify its sender)."""

    sequence: int
    timestamp: int
    payload: bytes
    arrival_ms: float
    opus: bytes | None = None


@dataclass(slots=True)
class Released:
    """A packet in sequence order and how many sequence numbers were skipped (lost) just
    before it (0 for the first packet of a stream or after a reset)."""

    packet: Held
    lost_before: int


class JitterBuffer:
    """Reorders one SSRC's packets. `max_delay_ms` bounds how long a gap is waited for;
    `depth` bounds how many packets may be held behind a gap."""

    def __init__(self, max_delay_ms: float = 100.0, depth: int = 5) -> None:
        if max_delay_ms < 0 or depth < 1:
            raise ValueError("max_delay_ms must be >= 0 and depth >= 1")
        self.max_delay_ms = max_delay_ms
        self.depth = depth
        self.expected: int | None = None
        self._held: dict[int, Held] = {}
        self._recent: deque[int] = deque(maxlen=256)
        self._recent_set: set[int] = set()

    def __len__(self) -> int:
        """Packets held."""
        return len(self._held)

    def push(self, packet: Held) -> str | None:
        """Hold `packet`; returns None when accepted, or the cause when refused:
        `duplicate` (that sequence number is held or was just released) or `late` (its
        place has already been given up)."""
        seq = packet.sequence
        if seq in self._held or seq in self._recent_set:
            return "duplicate"
        if self.expected is not None:
            ahead = seq_diff(seq, self.expected)
            if abs(ahead) > RESET_SEQ_JUMP:
                self.expected = None  # a restarted stream: release what is held first
            elif ahead < 0:
                return "late"
        self._held[seq] = packet
        return None

    def _first(self) -> int:
        ref = self.expected
        if ref is None:
            ref = min(self._held.values(), key=lambda h: h.arrival_ms).sequence
        return min(self._held, key=lambda s: seq_diff(s, ref))

    def pop_ready(self, now_ms: float) -> list[Released]:
        """The packets that may leave now (Unix ms), in sequence order."""
        out: list[Released] = []
        while self._held:
            first = self._first()
            head = self._held[first]
            gap = 0 if self.expected is None else seq_diff(first, self.expected)
            if gap == 0 and self.expected is not None:
                pass  # the next expected packet leaves at once
            elif (now_ms - min(h.arrival_ms for h in self._held.values()) < self.max_delay_ms
                  and len(self._held) <= self.depth):
                break  # wait for the missing packet (or, at the start, for reordering)
            out.append(self._release(first, head, max(gap, 0)))
        return out

    def drain(self) -> list[Released]:
        """Everything held, in order, as if its wait had expired (at stop)."""
        return self.pop_ready(float("inf"))

    def _release(self, seq: int, head: Held, lost: int) -> Released:
        del self._held[seq]
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(seq)
        self._recent_set.add(seq)
        self.expected = (seq + 1) & 0xFFFF
        return Released(head, lost)
