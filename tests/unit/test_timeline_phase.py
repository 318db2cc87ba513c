"""Each stream's sub-slot phase (discord/timeline.py, "Phase"): the place in its slot of
the least-delayed `arrival - 20 ms`, in samples at 48 kHz, relative to the slot the
stream's frames are placed at, stable while the placing anchor stays. Synthetic arrivals:
frame `k` is captured during slot `k` and arrives `latency` ms after that slot ends."""

from __future__ import annotations

import random

import pytest

from tests.unit.test_timeline_spurts import SSRC, T0, TS0, Driver
from voicetrack.audio import FRAME_MS, FRAME_SAMPLES
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.timeline import Timeline

pytestmark = pytest.mark.unit

MS = FRAME_SAMPLES // FRAME_MS  # 48 samples per ms


def arrivals(frames: range, latency_ms: float, jitter_ms: float = 0.0, seed: int = 5
             ) -> list[tuple[int, int, float]]:
    """(frame, RTP timestamp, arrival Unix ms), delay only ever added (`jitter_ms`)."""
    rnd = random.Random(seed)
    return [(k, (TS0 + k * FRAME_SAMPLES) & 0xFFFF_FFFF,
             T0 + (k + 1) * FRAME_MS + latency_ms + rnd.uniform(0, jitter_ms)) for k in frames]


def place(tl: Timeline, user: str, ssrc: int, frames: list[tuple[int, int, float]]
          ) -> list[int]:
    """Place frames straight by `slot` (no onset window); the phase after each."""
    phases = []
    for _, timestamp, arrival in frames:
        slot = tl.slot(user, ssrc, timestamp, arrival)
        if slot > tl.last_slot.get(user, slot - 1):
            tl.placed(user, slot)
        phases.append(tl.phase(user))
    return phases


def test_a_stream_arriving_7_3_ms_into_its_slots_has_that_phase() -> None:
    driver = Driver()
    placed = driver.play(arrivals(range(100, 400), 7.3))
    assert placed[100] == 100  # the slot, rounded down, as before
    assert abs(driver.tl.phase("u") - round(7.3 * MS)) <= MS
    assert driver.tl.phase("u") == 350


def test_two_speakers_keep_their_own_phases() -> None:
    tl = Timeline(SessionClock(T0))
    a = place(tl, "a", 1, arrivals(range(50, 150), 7.3))
    b = place(tl, "b", 2, arrivals(range(60, 160), 15.1))
    assert set(a) == {350} and set(b) == {round(15.1 * MS)}
    assert (tl.phase("a"), tl.phase("b"), tl.phase("nobody")) == (350, 725, 0)


def test_jitter_keeps_the_least_delayed_phase() -> None:
    """Up to 12 ms of added delay: the onset window's least-delayed arrival (within a ms of
    the undelayed one here) sets the phase, and the jittered arrivals after it leave it."""
    driver = Driver()
    frames = arrivals(range(100, 600), 3.0, jitter_ms=12.0)
    late_first = [(frames[0][0], frames[0][1], frames[0][2] + 12.0), *frames[1:]]
    driver.play(late_first)
    least = min(a - (T0 + (k + 1) * FRAME_MS) for k, _, a in frames[1:9])
    assert driver.tl.phase("u") == round(least * MS)
    assert abs(driver.tl.phase("u") - 3 * MS) <= MS
    tl = Timeline(SessionClock(T0))  # straight by `slot`: the first arrival sets it
    phases = place(tl, "u", SSRC, arrivals(range(100, 600), 3.0)[:1] + frames[1:])
    assert set(phases) == {3 * MS}


def test_the_phase_changes_only_with_the_placing_anchor() -> None:
    """Placed straight by `slot` (no onset window), a first packet 17 ms late (slot
    boundary + 19 ms) sets the phase, and on-time packets after it (+ 2 ms, less than two
    slots earlier) leave anchor and phase as they are: a stream is never shifted within
    itself. A new stream placed after the speaker's last slot, later than its evidence,
    has phase 0 (evidence before the placed slot: not moved later still)."""
    tl = Timeline(SessionClock(T0))
    frames = arrivals(range(100, 200), 2.0)
    first = [(frames[0][0], frames[0][1], frames[0][2] + 17.0)]
    assert place(tl, "u", SSRC, first)[0] == 19 * MS
    assert place(tl, "u", SSRC, frames[1:])[-1] == 19 * MS  # stable: the anchor stayed
    tl2 = Timeline(SessionClock(T0))  # a stream placed after the speaker's last slot
    place(tl2, "u", 1, arrivals(range(100, 200), 2.0))
    rejoin = arrivals(range(150, 250), 11.0)  # a new SSRC overlapping the placed audio
    assert place(tl2, "u", 2, rejoin)[0] == 0


def test_a_new_stream_gets_its_own_phase() -> None:
    tl = Timeline(SessionClock(T0))
    assert set(place(tl, "u", 1, arrivals(range(100, 200), 4.0))) == {4 * MS}
    assert set(place(tl, "u", 2, arrivals(range(300, 400), 16.5))) == {round(16.5 * MS)}


def test_an_anchor_move_within_a_stream_keeps_its_phase() -> None:
    """Review rev-phase fault 3: the phase was computed again at every change of the
    placing anchor within one stream (a first packet 45 ms late, then on-time packets
    after a pause: an earlier anchor), so the chunk after the pause carried another
    phase and promotion inserted or dropped the difference at that chunk's start, in the
    middle of speech. The stream keeps the phase it started with now; the anchor moves
    its audio by whole slots only. Failed before."""
    tl = Timeline(SessionClock(T0))
    frames = arrivals(range(100, 400), 7.3)
    late = [(k, ts, at + 45.0) for k, ts, at in frames[:1]]
    first = place(tl, "u", SSRC, late)[0]
    place(tl, "u", SSRC, frames[1:100])  # talking: the earlier estimate waits
    resyncs = tl.resyncs
    after = place(tl, "u", SSRC, frames[150:])  # after a pause of 1 s: it applies
    assert tl.resyncs > resyncs  # the anchor moved
    assert set(after) == {first}  # the phase did not
