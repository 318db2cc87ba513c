"""The speaker timeline (discord/timeline.py) under receiver stalls, late first packets and
sender timestamp discontinuities: a SessionClock, a Timeline and virtual arrival times.

A sender here produces one 20 ms frame per slot, its RTP timestamp advancing 960 ticks per
frame (RFC 7587 §4.1); frame `k` is captured during slot `BASE + k` and would arrive
`LATENCY_MS` after that slot ends. `feed` places frames the way the receiver does: a slot at
or before the speaker's last placed one is refused (counted as overlap)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from voicetrack.audio import FRAME_MS, FRAME_SAMPLES
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.timeline import Timeline

pytestmark = pytest.mark.unit

T0 = 1_800_000_000_000
BASE = 50  # frame 0 is captured during slot 50 (session ms 1000-1020)
LATENCY_MS = 9
TS0 = 2**32 - 960 * 40  # the RTP timestamp wraps 40 frames in


def on_time(k: int) -> float:
    """Unix ms at which frame `k` arrives without any receiver or network delay."""
    return T0 + (BASE + k + 1) * FRAME_MS + LATENCY_MS


def ts(k: int) -> int:
    return (TS0 + k * FRAME_SAMPLES) & 0xFFFF_FFFF


def feed(tl: Timeline, frames: Iterable[tuple[int, float]], ssrc: int = 7,
         user: str = "u") -> dict[int, int]:
    """Place `(frame index, arrival Unix ms)` in order; returns frame index → slot of the
    frames placed (refused ones are missing)."""
    placed: dict[int, int] = {}
    for k, arrival in frames:
        slot = tl.slot(user, ssrc, ts(k), arrival)
        if slot <= tl.last_slot.get(user, slot - 1):
            continue
        tl.placed(user, slot)
        placed[k] = slot
    return placed


def stall(frames: range, start: int, stall_ms: float, burst_ms: float = 2.0
          ) -> list[tuple[int, float]]:
    """On-time arrivals, except that the receiver reads nothing from the arrival of frame
    `start` on for `stall_ms`: the frames queued meanwhile come in a burst (spread over
    `burst_ms`) when it resumes."""
    resume = on_time(start) + stall_ms
    queued = [k for k in frames if on_time(k) >= on_time(start) and on_time(k) < resume]
    out = []
    for k in frames:
        if k in queued:
            out.append((k, resume + burst_ms * queued.index(k) / len(queued)))
        else:
            out.append((k, on_time(k)))
    return out


def test_clean_input_is_placed_at_the_first_arrival_slot() -> None:
    tl = Timeline(SessionClock(T0))
    placed = feed(tl, [(k, on_time(k)) for k in range(500)])
    assert placed == {k: BASE + k for k in range(500)}
    assert tl.resyncs == 0


@pytest.mark.parametrize("stall_ms", [700, 1500, 5000])
def test_a_receiver_stall_and_its_burst_move_nothing(stall_ms: int) -> None:
    """The recorder's loop is blocked for `stall_ms`, then drains the socket's backlog in
    a few ms: RTP timestamps still say where every frame belongs."""
    tl = Timeline(SessionClock(T0))
    arrivals = stall(range(1000), 100, stall_ms)
    placed = feed(tl, arrivals)
    assert placed == {k: BASE + k for k in range(1000)}
    assert tl.resyncs == 0


def test_repeated_stalls_under_load_move_nothing() -> None:
    """Stalls of 300-900 ms every 2 s for 80 s of audio, each drained in a burst."""
    tl = Timeline(SessionClock(T0))
    arrivals = [(k, on_time(k)) for k in range(4000)]
    for n, start in enumerate(range(50, 4000, 100)):
        resume = on_time(start) + 300 + 150 * (n % 5)
        for k in range(start, 4000):
            if on_time(k) < resume:
                arrivals[k] = (k, resume + 0.05 * (k - start))
    placed = feed(tl, arrivals)
    assert placed == {k: BASE + k for k in range(4000)}
    assert tl.resyncs <= 1


@pytest.mark.parametrize("late_ms", [300, 700])
def test_a_late_first_packet_is_corrected_at_the_next_pause(late_ms: int) -> None:
    """Frame 0 arrives `late_ms` late, with the frames queued behind it, then the flow is
    on time. Frames 0-99 keep the late anchor (moving them back would overwrite frames
    already placed), contiguous; after the speaker's pause (frames 100-149 never sent, the
    RTP timestamp running on) the stream sits at its true slots. (With 700 ms, more than
    `resync_ms`, the old timeline re-anchored at every packet.)"""
    tl = Timeline(SessionClock(T0))
    late = on_time(0) + late_ms
    queued = late_ms // FRAME_MS + 1
    arrivals = [(k, late + 0.1 * k) for k in range(queued)]
    arrivals += [(k, on_time(k)) for k in range(queued, 100)]
    arrivals += [(k, on_time(k)) for k in range(150, 400)]
    placed = feed(tl, arrivals)
    assert [placed[k] - (BASE + k) for k in range(100)] == [late_ms // FRAME_MS] * 100
    assert all(abs(placed[k] - (BASE + k)) <= 1 for k in range(150, 400))
    assert tl.resyncs == 1


def test_a_late_first_packet_then_a_new_ssrc() -> None:
    """The pending correction belongs to the stream: a new SSRC anchors anew, after the
    last placed slot."""
    tl = Timeline(SessionClock(T0))
    feed(tl, [(0, on_time(0) + 300)] + [(k, on_time(k)) for k in range(16, 30)])
    last = tl.last_slot["u"]
    assert tl.slot("u", 8, 1234, on_time(30)) == last + 1


def test_a_forward_rtp_jump_reanchors_to_arrival() -> None:
    """The sender's timestamp jumps 10 s ahead while its packets keep coming in real time."""
    tl = Timeline(SessionClock(T0))
    arrivals = [(k, on_time(k)) for k in range(100)]
    arrivals += [(k + 500, on_time(k)) for k in range(100, 300)]  # ts(k + 500): +10 s
    placed = feed(tl, arrivals)
    assert all(placed[k] == BASE + k for k in range(100))
    assert all(placed[k + 500] == BASE + k for k in range(100, 300))
    assert tl.resyncs == 1


@pytest.mark.parametrize("jump", [-500, -3000])
def test_a_backward_rtp_jump_reanchors_without_overlap(jump: int) -> None:
    """The sender's timestamp jumps back `jump` frames (its clock restarted): the frames
    after the jump are placed after the last one, never on it, and once the disagreement
    has lasted `resync_ms` they sit at their arrival slots again."""
    tl = Timeline(SessionClock(T0))
    arrivals = [(k, on_time(k)) for k in range(100)]
    arrivals += [(k + jump, on_time(k)) for k in range(100, 400)]
    placed = feed(tl, arrivals)
    assert all(placed[k] == BASE + k for k in range(100))
    after = [placed.get(k + jump) for k in range(100, 400)]
    got = [s for s in after if s is not None]
    assert got == sorted(set(got)) and got[0] > BASE + 99  # monotonic, after the jump
    assert all(placed[k + jump] == BASE + k for k in range(130, 400))
    assert tl.resyncs == 1


def test_a_sender_whose_timestamps_stall_in_a_pause() -> None:
    """A sender whose RTP timestamp does not advance while it is silent (it sends nothing
    for 2 s, then goes on from the timestamp after its last frame), placed without the
    onset window (`slot` alone, the fallback; test_timeline_spurts.py has the receiver's
    way): after `resync_ms` of disagreement its frames sit at their arrival slots, and
    nothing overlaps."""
    tl = Timeline(SessionClock(T0))
    arrivals = [(k, on_time(k)) for k in range(100)]
    arrivals += [(k, on_time(k + 100)) for k in range(100, 400)]  # 100 frames of pause
    placed = feed(tl, arrivals)
    assert all(placed[k] == BASE + k for k in range(100))
    assert sorted(placed.values()) == [placed[k] for k in sorted(placed)]
    assert len(placed) == 400
    assert all(placed[k] == BASE + k + 100 for k in range(126, 400))
    assert tl.resyncs == 1


@pytest.mark.parametrize(
    "scenario", ["stall", "late-first", "late-first-700", "jump", "back", "pause"])
def test_no_resync_loop(scenario: str) -> None:
    """After any of the above, 2000 more packets with a little network jitter renew the
    anchor a bounded number of times (the old re-anchor at `last + 1` did it on every
    packet after a burst)."""
    tl = Timeline(SessionClock(T0))
    head: list[tuple[int, float]] = [(k, on_time(k)) for k in range(100)]
    offset = 0  # frame index - on-time index in the tail
    if scenario == "stall":
        head = stall(range(200), 20, 2000)
    elif scenario.startswith("late-first"):
        late_ms = 700 if scenario.endswith("700") else 300
        queued = late_ms // FRAME_MS + 1  # frame 0 late, the frames behind it in a burst
        head = [(k, on_time(0) + late_ms + 0.1 * k) for k in range(queued)]
        head += [(k, on_time(k)) for k in range(queued, 100)]
    elif scenario == "jump":
        head += [(k + 500, on_time(k)) for k in range(100, 200)]
        offset = 500
    elif scenario == "back":
        head += [(k - 80, on_time(k)) for k in range(100, 200)]
        offset = -80
    elif scenario == "pause":
        head += [(k, on_time(k + 100)) for k in range(100, 200)]
        offset = -100
    start = head[-1][0] + 1
    feed(tl, head)
    before = tl.resyncs
    tail = [(start + i, on_time(start - offset + i) + (7 * i) % 13) for i in range(2000)]
    feed(tl, tail)
    assert tl.resyncs - before <= 1
    assert tl.resyncs <= 3


def test_a_pending_correction_keeps_pauses_and_yields_to_a_jump() -> None:
    """Frame 0 arrives 2 s late with the frames queued behind it: 100 slots of correction
    wait. A 1 s pause (shorter than that) keeps its length at the old anchor; then the
    timestamps jump 10 s ahead, which places the next frames right after the last placed
    one (not 10 s later), and the next pause long enough applies the estimate."""
    tl = Timeline(SessionClock(T0))
    arrivals = [(k, on_time(0) + 2000 + 0.1 * k) for k in range(101)]
    arrivals += [(k, on_time(k)) for k in range(101, 200)]
    arrivals += [(k, on_time(k)) for k in range(250, 300)]  # after 50 frames of pause
    placed = feed(tl, arrivals)
    assert all(placed[k] == BASE + 100 + k for k in range(300) if k in placed)
    assert tl.resyncs == 0
    last = tl.last_slot["u"]
    placed = feed(tl, [(k + 500, on_time(k)) for k in range(300, 400)])
    assert [placed[k + 500] for k in range(300, 400)] == list(range(last + 1, last + 101))
    assert tl.resyncs == 1
    placed = feed(tl, [(k + 500, on_time(k)) for k in range(600, 700)])  # 200 frames later
    assert all(placed[k + 500] == BASE + k for k in range(600, 700))
    assert tl.resyncs == 2
