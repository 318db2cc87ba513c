"""Placing a speaker's frames on the session's 20 ms slot grid.

Units: session time in ms, slots of 20 ms (`FRAME_MS`), RTP timestamps in ticks of the
48 kHz Opus RTP clock, 960 ticks per 20 ms frame (RFC 7587 §4.1). An RTP timestamp is the
sampling instant of the packet's first sample; a stream starts it at a random value and
advances it by the samples each packet carries, modulo 2**32 (RFC 3550 §5.1; `ts_diff`
takes the wrap). It says exactly how far apart two frames of one SSRC were captured, but
nothing about session time: that link, the stream's anchor, is estimated from arrivals.

Estimate. A frame's 20 ms of audio had been captured by the time it arrived, so it belongs
no later than the slot holding `arrival - 20 ms`. Delay (the network's, or the receiver's
own: a blocked event loop leaves packets queued in the socket, to come out late and then in
a burst) only ever adds to arrival time, so the least-delayed packet is the best witness.
A stream's estimate starts at its first packet (the slot of `arrival - 20 ms`, rounded
down; the remaining bias is the network latency, tens of ms on Discord) and moves earlier
whenever a later packet's `arrival - 20 ms` slot is at least two slots before the slot the
estimate gives it (one slot of slack absorbs jitter across a slot boundary). Late packets
do not move it: a receiver stall and its burst leave every frame at its RTP-derived slot.

Discontinuities. The estimate moves later only when the sender's timestamps jumped back or
stalled (a sender whose clock stops while it is silent), a disagreement that persists:
once a stream's packets have arrived more than `resync_ms` late for `resync_ms` of arrival
time, by the least lateness seen meanwhile (so a long drain moves it only by what its
least-delayed packet proves, and on-time packets afterwards move it back), or at once when
such a late packet's slot is at or before the speaker's last placed slot (the timestamps
went back: a receiver stall never does that). A forward jump of the timestamps needs no
wait: its packets arrive before their slots, which moves the estimate earlier at once.
Every change makes the estimate agree with the arrival of the packet that caused it, so
re-anchoring cannot loop.

Onsets. A stalled pause is also seen at once, when the frames allow it: a speaker's talk
spurt after a pause with stalled timestamps starts with a frame that arrived later than its
RTP gap to the previous frame, a silence frame, says (by `ONSET_MS` or more). A sender ends
each spurt with five silence frames before it stops sending (Discord's voice docs, "Voice
Data Interpolation"; discord.py does), so a late frame after audio is delay (a receiver
stall, a sender's send thread that fell behind) and opens nothing. After silence the first
frame out of a receiver stall's backlog looks the same as an onset; only the arrivals after
it tell them apart (a backlog drains faster than real time and is followed by on-time
packets, a spurt comes at the pace of its timestamps). So the receiver holds the frames
from such an onset (and from a stream's first frame) for `WINDOW_MS`, longer while a
backlog drains (`hold`), and `settle` then takes the least-delayed arrival among them as
the evidence: for a new stream it is the anchor, for an open one a later estimate by
`EARLY_SLOTS` or more that `STEADY_FRAMES` arrivals agree on (a stalled pause), applied at
once since it overlaps nothing. A backlog changes nothing, since the on-time packets after
it are in the window; a stream that starts in a receiver stall is anchored by them. A pause
during which the timestamps advance, a forward jump and a jump back open no window (they
are handled as above). The `resync_ms` rule stays the fallback for onsets the window cannot
settle (a spurt that starts and ends inside a receiver stall, a sender that sends no
silence frames before a pause) and for a caller that does not hold.

Drift. A sender's RTP clock that runs fast or slow against the session clock is corrected
at each onset after a stalled pause (to within a slot: measured in
tests/unit/test_timeline_spurts.py at ±300 ppm) and by the rules above otherwise; within
one uninterrupted talk spurt nothing can correct it without dropping or stretching audio,
so it stays off by the drift over the spurt's length (18 ms per minute at 300 ppm).

Placement. Frames are placed by a placing anchor that follows the estimate but never moves
audio onto a slot already placed. A change applies at once when the estimate's slot for the
current frame is after the speaker's last placed slot (a later anchor, a forward jump, or
an earlier one after a pause long enough). An earlier estimate that would overlap placed
audio waits: meanwhile frames stay contiguous at the old anchor, late by the correction,
until the speaker's next pause at least that long; it is never applied piecewise, so a lost
stretch or a pause still leaves a gap of the right length. When the estimate moved by more
than `resync_ms` at a discontinuity (the old anchor means nothing any more), or the old
anchor overlaps placed audio while the estimate is later, and the estimate's slot is taken,
the frame goes right after the last placed slot instead.
`resyncs` counts changes of the placing anchor.

The anchor is kept across transport reconnects and DAVE epoch changes (neither touches RTP
timestamps) and renewed when the stream changes (a new SSRC for the user: rejoin, new
client): placed at its first packet's arrival slot, but never before the speaker's last
placed slot.

Phase. Slots are whole 20 ms, but a stream's frames are captured at any instant: placing
by the slot of `arrival - 20 ms`, rounded down, puts the audio early by that instant's
place in its slot (0-20 ms), and two speakers up to a slot apart. So each stream keeps its
evidence to the sample: the least `arrival - 20 ms` (session ms) seen for an RTP timestamp
(`_Stream.evidence`, the least-delayed arrival; a window's for a settled onset), and
`phase(user)` is how far (samples at 48 kHz, 0..959) that lies after the start of the
slot the placing anchor gives that timestamp: 0 when it lies before it (the least-delayed
evidence came after the anchor was set, or the anchor was put after the speaker's last
slot), 959 at most. It is computed once, when the stream's placing anchor is first set
(its onset window settled, or its first packet placed), and kept for the stream's life:
a later change of the placing anchor (an earlier estimate after a pause, a talk spurt of
a sender whose timestamps stall while silent, the `resync_ms` rule) moves the stream's
audio by whole slots only, as it did before phases existed. The chunker keeps one phase
per track, and promotion applies a change at the chunk's start, inserting or dropping the
difference there: a phase that changed at a pause inside a chunk would cut into speech
at its start (a review measured a click of 3350 against 275 on a tone), while a new
stream (a rejoin: a new SSRC) starts after the speaker left. The chunker writes the phase
into the chunk (`ChunkTrack.phaseSamples`) and promotion delays the track by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicetrack.audio import FRAME_MS, FRAME_SAMPLES
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.rtp import ts_diff

EARLY_SLOTS = 2
"""A packet arriving this many slots before its estimated slot moves the estimate earlier."""
ONSET_MS = EARLY_SLOTS * FRAME_MS
"""A packet whose arrival gap to the stream's previous packet exceeds their RTP gap by this
much (40 ms) may start a talk spurt after a pause with stalled timestamps: it opens a
window."""
WINDOW_MS = 8 * FRAME_MS
"""How long (160 ms) the frames from an onset wait for the arrivals that settle it: enough
for the first on-time packet after a backlog (a receiver stall's drains in a burst; a
sender's send thread that fell behind on a busy host catches up over 100 ms or more, seen
with discord.py on the local Discord)."""
DRAIN_MS = 4 * FRAME_MS
"""A window whose least delay improved by `DRAIN_STEP_MS` or more within this long (80 ms)
is still draining a backlog: it stays open, up to `MAX_WINDOW_MS`."""
DRAIN_STEP_MS = FRAME_MS / 2
"""A window's arrivals getting less delayed by this much (10 ms, more than network jitter
makes) since the last step are a backlog draining."""
STEADY_FRAMES = 3
"""A window moves an open stream's estimate later only when this many of its arrivals are
within a slot of its least delayed (the sender's new pace, not one lucky packet in a
backlog's lull)."""
MAX_WINDOW_MS = 10 * FRAME_MS
"""The longest (200 ms) frames wait from an onset: frames that arrived on time still reach
the chunker well within its 400 ms seal delay."""


@dataclass(frozen=True, slots=True)
class _Anchor:
    """RTP `timestamp` is captured at the start of `slot`."""

    timestamp: int
    slot: int

    def at(self, timestamp: int) -> int:
        return self.slot + round(ts_diff(timestamp, self.timestamp) / FRAME_SAMPLES)


@dataclass(slots=True)
class _Stream:
    ssrc: int
    estimate: _Anchor
    """From the least-delayed arrivals (and confirmed discontinuities)."""
    placing: _Anchor
    """What frames are placed by: the estimate once it overlaps nothing placed."""
    late_since_ms: float | None = None
    """Arrival of the first packet of the current run of packets > `resync_ms` late."""
    late_min: int = 0
    """The least lateness (slots) in that run."""
    evidence: tuple[int, float] = (0, 0.0)
    """(RTP timestamp, session ms): that timestamp was captured at or before then, by the
    least-delayed arrival (`arrival - 20 ms`) since the estimate last moved later."""
    phase: int = 0
    """Samples (48 kHz, 0..959) the placed audio belongs after its slots (`Timeline.phase`)."""


@dataclass(slots=True)
class _Window:
    """An onset waiting to be settled: `anchor` is the least-delayed arrival's evidence so
    far (the slot it gives RTP `anchor.timestamp`), `opened_ms` the onset's arrival,
    `improved_ms` that of the last packet that moved `anchor` earlier."""

    anchor: _Anchor
    opened_ms: float
    improved_ms: float
    least_ms: float
    """`arrival - 20 ms x frames after anchor.timestamp` (Unix ms) at the last step of a
    drain (or the onset's): each arrival `DRAIN_STEP_MS` below it is the next step."""
    onset_slot: int
    """The onset's own evidence for `anchor.timestamp`."""
    evidence: list[int]
    """Every arrival's evidence (slot) for `anchor.timestamp`, the onset's first."""
    best_ms: float = 0.0
    """The least evidence (session ms) for `anchor.timestamp`, to the sample."""


class Timeline:
    """Slots for every speaker of one session. `resyncs` counts renewed anchors."""

    def __init__(self, clock: SessionClock, resync_ms: int = 500) -> None:
        if resync_ms < FRAME_MS:
            raise ValueError("resync_ms must be at least one frame (20 ms)")
        self.clock = clock
        self.resync_ms = resync_ms
        self.resync_slots = resync_ms // FRAME_MS
        self.resyncs = 0
        self._streams: dict[str, _Stream] = {}
        self.last_slot: dict[str, int] = {}
        self._heard: dict[tuple[str, int], tuple[int, float, bool]] = {}
        self._windows: dict[tuple[str, int], _Window] = {}

    def hold(self, user_id: str, ssrc: int, timestamp: int, arrival_ms: float,
             silence: bool = False) -> bool:
        """Whether the frame with RTP `timestamp` on `ssrc` of `user_id` that arrived at
        `arrival_ms` (Unix ms; frames given in sequence order; `silence`: it is the Opus
        silence frame) must wait before `slot`: it opens a window (the stream's first
        frame, or one after a silence frame that arrived `ONSET_MS` later than its RTP gap
        to it says), or one is open. Its arrival is evidence for the window; call `settle`
        until it returns True, then place the held frames in order. A sender ends each
        talk spurt with five silence frames before it stops sending (Discord's voice
        docs, "Voice Data Interpolation"), so a gap after audio is delay, not a pause."""
        key = (user_id, ssrc)
        heard = self._heard.get(key)
        self._heard[key] = (timestamp, arrival_ms, silence)
        anchor = _Anchor(timestamp, self.clock.slot_at(arrival_ms - FRAME_MS))
        window = self._windows.get(key)
        if window is not None:
            base = window.anchor.timestamp
            window.best_ms = min(window.best_ms, self._session_ms(arrival_ms)
                                 - ts_diff(timestamp, base) / FRAME_SAMPLES * FRAME_MS)
            window.evidence.append(anchor.at(base))
            if anchor.at(base) < window.anchor.slot:
                window.anchor = _Anchor(base, anchor.at(base))
            late_ms = arrival_ms - ts_diff(timestamp, base) / FRAME_SAMPLES * FRAME_MS
            if late_ms <= window.least_ms - DRAIN_STEP_MS:  # a step of the drain
                window.improved_ms, window.least_ms = arrival_ms, late_ms
            return True
        if heard is not None:
            rtp_ms = ts_diff(timestamp, heard[0]) / FRAME_SAMPLES * FRAME_MS
            if not heard[2] or rtp_ms <= 0 or arrival_ms - heard[1] - rtp_ms < ONSET_MS:
                return False  # in step, mid-spurt, or the timestamps went back (`slot`)
        self._windows[key] = _Window(anchor, arrival_ms, arrival_ms, arrival_ms,
                                     anchor.slot, [anchor.slot], self._session_ms(arrival_ms))
        return True

    def settle(self, user_id: str, ssrc: int, now_ms: float) -> bool:
        """Close the window of `ssrc` of `user_id` at `now_ms` (Unix ms; `inf` at stop)
        once `WINDOW_MS` has passed since its onset and `DRAIN_MS` since its last
        improvement, or `MAX_WINDOW_MS` since its onset; True when closed (or none was
        open). The least-delayed arrival in it anchors a new stream; an open stream's
        estimate moves later to it when it is at least `EARLY_SLOTS` later (a pause with
        stalled timestamps) and `STEADY_FRAMES` of its arrivals agree, placing the spurt
        at once (`slot`), unless a backlog that
        started with the onset was still draining at `MAX_WINDOW_MS` (delay, not a pause:
        the `resync_ms` rule decides); a backlog that drained to a later level than the
        estimate (a pause that ended during a receiver stall) moves it there. Earlier
        evidence is left to `slot`."""
        key = (user_id, ssrc)
        window = self._windows.get(key)
        if window is None:
            return True
        draining = now_ms - window.improved_ms < DRAIN_MS
        if now_ms - window.opened_ms < (MAX_WINDOW_MS if draining else WINDOW_MS):
            return False
        del self._windows[key]
        anchor, stream = window.anchor, self._streams.get(user_id)
        last = self.last_slot.get(user_id)
        evidence = (anchor.timestamp, window.best_ms)
        if stream is None or stream.ssrc != ssrc:
            start = anchor.slot if last is None else max(anchor.slot, last + 1)
            self._streams[user_id] = stream = _Stream(
                ssrc, anchor, _Anchor(anchor.timestamp, start), evidence=evidence)
            stream.phase = self._phase(stream)
        elif (anchor.slot - stream.estimate.at(anchor.timestamp) >= EARLY_SLOTS
              and not (draining and window.onset_slot - anchor.slot >= EARLY_SLOTS)
              and sum(e <= anchor.slot + 1 for e in window.evidence) >= STEADY_FRAMES):
            stream.estimate, stream.late_since_ms = anchor, None
            stream.evidence = evidence
        return True

    def slot(self, user_id: str, ssrc: int, timestamp: int, arrival_ms: float) -> int:
        """The slot of the frame with RTP `timestamp` on `ssrc` of `user_id` that arrived
        at `arrival_ms` (Unix ms). Does not record it: see `placed`. The first packet of
        a stream is placed at the slot of `arrival_ms - 20` (or after the last placed)."""
        arrival_slot = self.clock.slot_at(arrival_ms - FRAME_MS)
        last = self.last_slot.get(user_id)
        stream = self._streams.get(user_id)
        if stream is None or stream.ssrc != ssrc:
            start = arrival_slot if last is None else max(arrival_slot, last + 1)
            self._streams[user_id] = stream = _Stream(
                ssrc, _Anchor(timestamp, arrival_slot), _Anchor(timestamp, start),
                evidence=(timestamp, self._session_ms(arrival_ms)))
            stream.phase = self._phase(stream)
            return start
        self._witness(stream, timestamp, arrival_ms)
        estimate, jumped = self._estimate(stream, timestamp, arrival_ms, arrival_slot, last)
        slot = stream.placing.at(timestamp)
        if slot == estimate:
            return slot
        if last is None or estimate > last:
            stream.placing = stream.estimate  # nothing placed in the way
        elif (jumped or (slot <= last and estimate > slot)) and slot != last + 1:
            # the timestamps jumped (the old anchor means nothing now), or the old anchor
            # overlaps placed audio while the estimate is later: go on right after `last`
            stream.placing = _Anchor(timestamp, last + 1)
        else:
            return slot  # an earlier estimate waits for a pause long enough
        self.resyncs += 1  # the phase stays the stream's (module docstring, Phase)
        return stream.placing.at(timestamp)

    def phase(self, user_id: str) -> int:
        """Samples (48 kHz, 0..959) after its slot that the audio of `user_id`'s current
        stream belongs (module docstring, Phase); 0 for a user with no stream."""
        stream = self._streams.get(user_id)
        return stream.phase if stream is not None else 0

    def _session_ms(self, arrival_ms: float) -> float:
        """Session ms by which a frame that arrived at `arrival_ms` (Unix ms) was captured."""
        return arrival_ms - FRAME_MS - self.clock.t0_ms

    def _witness(self, stream: _Stream, timestamp: int, arrival_ms: float) -> None:
        """Keep the arrival as the stream's evidence when it is the least delayed yet."""
        ts, ms = stream.evidence
        here = self._session_ms(arrival_ms)
        if here < ms + ts_diff(timestamp, ts) / FRAME_SAMPLES * FRAME_MS:
            stream.evidence = (timestamp, here)

    @staticmethod
    def _phase(stream: _Stream) -> int:
        """How far (samples, 0..959) the evidence lies after the placing anchor's slot."""
        ts, ms = stream.evidence
        at = ms + ts_diff(stream.placing.timestamp, ts) / FRAME_SAMPLES * FRAME_MS
        offset = at - stream.placing.slot * FRAME_MS
        return 0 if offset <= 0 else min(round(offset * FRAME_SAMPLES / FRAME_MS),
                                         FRAME_SAMPLES - 1)

    def _estimate(self, stream: _Stream, timestamp: int, arrival_ms: float,
                  arrival_slot: int, last: int | None) -> tuple[int, bool]:
        """Update the stream's estimate with one arrival: its slot for `timestamp`, and
        whether it moved by more than `resync_ms` (a discontinuity of the timestamps)."""
        estimate = stream.estimate.at(timestamp)
        lateness = arrival_slot - estimate
        if lateness <= -EARLY_SLOTS:  # less delayed than the estimate allows: earlier
            stream.estimate = _Anchor(timestamp, arrival_slot)
            stream.late_since_ms = None
            return arrival_slot, -lateness > self.resync_slots
        if lateness <= self.resync_slots:
            stream.late_since_ms = None
            return estimate, False
        if stream.late_since_ms is None:
            stream.late_since_ms, stream.late_min = arrival_ms, lateness
        else:
            stream.late_min = min(stream.late_min, lateness)
        went_back = last is not None and stream.placing.at(timestamp) <= last
        if went_back or arrival_ms - stream.late_since_ms >= self.resync_ms:
            shift = lateness if went_back else stream.late_min
            stream.estimate = _Anchor(timestamp, estimate + shift)
            stream.late_since_ms = None
            stream.evidence = (timestamp, self._session_ms(arrival_ms) if went_back
                               else (estimate + shift) * FRAME_MS)
            return estimate + shift, True
        return estimate, False

    def placed(self, user_id: str, slot: int) -> None:
        """Record that `user_id` has a frame at `slot` (keeps re-anchoring monotonic)."""
        if slot > self.last_slot.get(user_id, slot - 1):
            self.last_slot[user_id] = slot
