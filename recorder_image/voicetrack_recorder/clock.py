"""Session time: milliseconds since the session's `status.startedAt`, on a 20 ms slot grid,
on the API server's clock.

The operator checks every chunk's window against the API server's own timestamps (the
session's and the chunk's `creationTimestamp`, `voicetrack_operator.services.isolation`:
`endMs` at most the elapsed time plus 60 s), but `startedAt` is read from the operator's
clock and windows from this node's. Skew between those clocks went straight into every
window: a node 61 s ahead (or an operator 61 s behind) had every chunk refused, the
meeting ended with no audio, and the recorder kept "recording". So the recorder measures
its clock against the API server's (`server_offset_ms`, from the `Date` header of an API
answer: `RecorderKube.clock_offset_ms`) and `session_origin` places the session start on
this node's clock accordingly; a `startedAt` before the session's own `creationTimestamp`
(an operator clock behind) is taken as that creation time. Offsets within
`CORRECT_ABOVE_MS` are left alone (the `Date` header has a 1 s resolution).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

from voicetrack.audio import FRAME_MS

STEP_ABOVE_MS = 10_000
"""A change (ms) of this node's measured offset against the API server since the session
clock was set beyond which the node's clock stepped mid-run (`SessionClock.stepped`):
well above the measuring error, well within the operator's 60 s window tolerance."""

CORRECT_ABOVE_MS = 2000
"""Clock offsets (ms) up to this are not corrected: within what one `Date` header (1 s
resolution) and a round trip can measure, and far within the operator's 60 s window
tolerance; a healthy cluster's session time stays exactly `now - startedAt`."""


def server_offset_ms(sent_s: float, received_s: float, date_header: str) -> int:
    """This node's clock minus the API server's, in ms, from one HTTP exchange: the request
    sent at `sent_s` and its answer received at `received_s` (Unix s, this node's clock)
    carrying `Date: date_header` (RFC 9110 §6.6.1 IMF-fixdate, whole seconds: the server's
    time lies within that second, taken at its middle, at the exchange's midpoint). Error
    within 0.5 s plus half the round trip. Raises ValueError for a header that does not
    parse."""
    server_s = parsedate_to_datetime(date_header).timestamp() + 0.5
    return round(((sent_s + received_s) / 2 - server_s) * 1000)


@dataclass(frozen=True)
class SessionOrigin:
    """Where session time 0 lies: `t0_ms` on this node's clock (Unix ms, what `SessionClock`
    takes), `server_ms` on the API server's, the clock offset applied (this node minus the
    server, ms; 0 when not corrected), and what was corrected (log lines, empty when
    nothing was)."""

    t0_ms: int
    server_ms: int
    offset_ms: int
    notes: tuple[str, ...] = ()
    measured_ms: int | None = None
    """The offset as measured (ms; None: not measured), applied or not."""


def session_origin(started_at_ms: int, created: datetime | None,
                   offset_ms: int | None) -> SessionOrigin:
    """The session's time origin for this node: `started_at_ms` (`status.startedAt`, Unix
    ms, stamped by the operator's clock), raised to `created` (the session's
    `metadata.creationTimestamp`, the API server's clock; None: unknown) when more than
    `CORRECT_ABOVE_MS` before it (the session cannot have started before it existed: the
    operator's clock is behind), then moved by `offset_ms` (this node minus the API
    server, `server_offset_ms`; None: not measured) when that is more than
    `CORRECT_ABOVE_MS` either way. Deterministic in its inputs, so a restarted recorder
    on the same node continues the same session time (within the offset's measuring
    error, which `Recorder.resume_point` absorbs)."""
    notes: list[str] = []
    server_ms = started_at_ms
    if created is not None:
        created_ms = int(created.timestamp() * 1000)
        if created_ms - started_at_ms > CORRECT_ABOVE_MS:
            notes.append(f"status.startedAt is {created_ms - started_at_ms} ms before the "
                         "session's creationTimestamp (the operator's clock is behind the "
                         "API server's): session time counts from the creation instead")
            server_ms = created_ms
    applied = 0
    if offset_ms is None:
        notes.append("the API server's clock could not be read (no Date header): session "
                     "time is this node's clock, uncorrected")
    elif abs(offset_ms) > CORRECT_ABOVE_MS:
        applied = offset_ms
        notes.append(f"this node's clock is {offset_ms} ms "
                     f"{'ahead of' if offset_ms > 0 else 'behind'} the API server's: "
                     "session time is corrected by that much")
    return SessionOrigin(t0_ms=server_ms + applied, server_ms=server_ms, offset_ms=applied,
                         notes=tuple(notes), measured_ms=offset_ms)


@dataclass
class SessionClock:
    """Maps wall-clock time to session time. `t0_ms` is the session start in Unix ms on
    `time_fn`'s clock (`session_origin().t0_ms`: the API server's time of the start, moved
    by this node's offset); `time_fn` returns Unix seconds (float) and is replaceable for
    tests and replays."""

    t0_ms: int
    time_fn: Callable[[], float] = field(default=time.time)
    offset_ms: int | None = None
    """This node's clock minus the API server's (ms) when `t0_ms` was set
    (`SessionOrigin.measured_ms`); None: not measured."""
    mono_fn: Callable[[], float] | None = None
    """A monotonic clock (s) `wall_stepped` compares `time_fn` with: `time.monotonic` when
    `time_fn` is `time.time` (None: the check is off, as with a replayed `time_fn`)."""

    def __post_init__(self) -> None:
        if self.mono_fn is None and self.time_fn is time.time:
            self.mono_fn = time.monotonic
        self._base = (self.time_fn(), self.mono_fn() if self.mono_fn else 0.0)

    def wall_stepped(self) -> str | None:
        """Why session time no longer follows real time, None while it does: this node's
        wall clock moved more than `STEP_ABOVE_MS` against its monotonic clock since this
        clock was set. NTP slews both alike; only a step (settimeofday, an NTP step, a VM
        resumed) moves one against the other. Seen at the next tick, unlike `stepped`,
        which waits for the session watch's next measure (up to its 30 s): before, a 3 h
        forward step sealed a flood of empty windows and ended the session as
        `max-duration`."""
        if self.mono_fn is None:
            return None
        wall0, mono0 = self._base
        step = int(((self.time_fn() - wall0) - (self.mono_fn() - mono0)) * 1000)
        if abs(step) <= STEP_ABOVE_MS:
            return None
        return (f"this node's clock stepped {step} ms against its monotonic clock since "
                "the session clock was set: restarting to measure it again")

    def stepped(self, measured_ms: int | None) -> str | None:
        """Why session time no longer follows the API server's clock, None while it does:
        the offset `measured_ms` (this node minus the API server, ms, measured now; None:
        not measured) differs from `offset_ms` by more than `STEP_ABOVE_MS` (this node's
        clock was stepped, e.g. by NTP, after the session clock was set: windows would be
        that far off, past 60 s refused). The recorder ends with a failure on it, and its
        restart measures again and continues at the next index."""
        if measured_ms is None or self.offset_ms is None:
            return None
        step = measured_ms - self.offset_ms
        if abs(step) <= STEP_ABOVE_MS:
            return None
        return (f"this node's clock moved {step} ms against the API server's since the "
                f"session clock was set (offset {self.offset_ms} ms, now {measured_ms} "
                "ms): restarting to measure it again")

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

    def push(self, user_id: str, slot: int, packet: bytes, phase: int = 0) -> bool:
        """Record one 20 ms Opus packet of `user_id` at session `slot`, its audio `phase`
        samples (48 kHz, 0..959) after the slot's start; False if dropped."""
        ...
