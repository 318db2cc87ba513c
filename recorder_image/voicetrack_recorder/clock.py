"""Session time: milliseconds since the session's `status.startedAt`, on a 20 ms slot grid."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from voicetrack.audio import FRAME_MS


@dataclass
class SessionClock:
    """Maps wall-clock time to session time. `t0_ms` is the session start in Unix ms;
    `time_fn` returns Unix seconds (float) and is replaceable for tests and replays."""

    t0_ms: int
    time_fn: Callable[[], float] = field(default=time.time)

    def now_ms(self) -> int:
        """Session time now, in ms (may be negative before the start)."""
        return int(self.time_fn() * 1000) - self.t0_ms

    def slot_at(self, unix_ms: float) -> int:
        """The 20 ms slot holding the instant `unix_ms` (Unix ms)."""
        return int((unix_ms - self.t0_ms) // FRAME_MS)

    def now_slot(self) -> int:
        """The 20 ms slot of session time now."""
        return self.slot_at(self.time_fn() * 1000)


class FrameSink(Protocol):
    """Where a source delivers frames: the chunker's `push`."""

    def push(self, user_id: str, slot: int, packet: bytes) -> bool:
        """Record one 20 ms Opus packet of `user_id` at session `slot`; False if dropped."""
        ...
