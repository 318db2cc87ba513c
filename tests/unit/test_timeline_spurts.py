"""The timeline's onset window (discord/timeline.py `hold`/`settle`) driven the way the
receiver drives it, with realistic arrival sequences: a speaker that pauses with stalled or
advancing RTP timestamps, network jitter, receiver stalls (before, inside and at the start
of a talk spurt), a timestamp jump back, and a sender clock that drifts.

A sender's frames are numbered by capture slot: frame `k` is captured during session slot
`k` (its 20 ms of audio end at `(k + 1) * 20` ms) and arrives `LATENCY_MS` + jitter later;
a talk spurt is a range of capture slots, and the RTP timestamp of a frame is 960 ticks
after the previous frame's (stalled across pauses) or `960 * k` (advancing). `Driver`
plays arrivals in time order, ticking every 20 ms, and records where frames land.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest

from voicetrack.audio import FRAME_MS, FRAME_SAMPLES
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.timeline import WINDOW_MS, Timeline

pytestmark = pytest.mark.unit

T0 = 1_800_000_000_000
LATENCY_MS = 7
TS0 = 2**32 - 960 * 300  # wraps 300 frames in
SSRC = 77


class Driver:
    """The receiver's use of a Timeline for one user: frames in sequence order, each
    `hold`-ed, the held ones placed once `settle` says so (checked at every arrival and
    every 20 ms tick), refusing slots at or before the last placed."""

    def __init__(self, resync_ms: int = 500) -> None:
        self.tl = Timeline(SessionClock(T0), resync_ms)
        self.held: list[tuple[int, int, float]] = []
        self.placed: dict[int, int] = {}
        """frame (capture slot) → slot it was placed at."""
        self.refused = 0
        self.windows = 0
        """Onset windows opened (the frames that started one)."""

    def _place(self, frame: int, timestamp: int, arrival: float) -> None:
        slot = self.tl.slot("u", SSRC, timestamp, arrival)
        if slot <= self.tl.last_slot.get("u", slot - 1):
            self.refused += 1
            return
        self.tl.placed("u", slot)
        self.placed[frame] = slot

    def _tick(self, now: float) -> None:
        if self.held and self.tl.settle("u", SSRC, now):
            held, self.held = self.held, []
            for frame in held:
                self._place(*frame)

    def play(self, arrivals: Iterable[tuple[int, int, float]],
             silence: frozenset[int] = frozenset()) -> dict[int, int]:
        """`(frame, RTP timestamp, arrival Unix ms)` in arrival order; the frames in
        `silence` are Opus silence frames (a sender's last before it pauses)."""
        now = T0
        for frame, timestamp, arrival in sorted(arrivals, key=lambda a: a[2]):
            while now + FRAME_MS <= arrival:
                now += FRAME_MS
                self._tick(now)
            self._tick(arrival)
            if self.tl.hold("u", SSRC, timestamp, arrival, frame in silence):
                self.windows += not self.held
                self.held.append((frame, timestamp, arrival))
            elif self.held:
                self.held.append((frame, timestamp, arrival))
            else:
                self._place(frame, timestamp, arrival)
        self._tick(math.inf)
        return self.placed


def talk(spurts: list[range], *, stalled: bool = True, jitter_ms: float = 0.0,
         seed: int = 3, rate: float = 1.0) -> list[tuple[int, int, float]]:
    """Arrivals of the frames of `spurts` (capture slots). `rate`: the sender's RTP clock
    runs this much faster than the session clock (1.0001 = +100 ppm): a frame captured
    during its own 20 ms is sent when its clock says so."""
    rnd = random.Random(seed)
    out, ts, prev = [], TS0, None
    for spurt in spurts:
        for k in spurt:
            if prev is not None:
                ts += FRAME_SAMPLES * (1 if stalled else k - prev)
            prev = k
            sent = (k + 1) * FRAME_MS / rate
            out.append((k, ts & 0xFFFF_FFFF, T0 + sent + LATENCY_MS + rnd.uniform(0, jitter_ms)))
    return out


def ends(spurts: list[range]) -> frozenset[int]:
    """The last frame of each spurt: a sender ends a talk spurt with silence frames."""
    return frozenset(s[-1] for s in spurts)


def stall(arrivals: list[tuple[int, int, float]], at_slot: int, ms: float
          ) -> list[tuple[int, int, float]]:
    """The receiver reads nothing from slot `at_slot` for `ms`, then drains the backlog
    in 2 ms."""
    start, resume = T0 + at_slot * FRAME_MS, T0 + at_slot * FRAME_MS + ms
    queued = [i for i, a in enumerate(arrivals) if start <= a[2] < resume]
    out = list(arrivals)
    for n, i in enumerate(queued):
        out[i] = (out[i][0], out[i][1], resume + 2 * n / len(queued))
    return out


def errors(placed: dict[int, int], spurts: list[range], rate: float = 1.0
           ) -> dict[int, int]:
    """frame → placed slot - capture slot (in session time: the sender's slot `k` is the
    session's `k / rate`), for frames not at their capture slot (never placed: 999)."""
    out = {}
    for k in (k for s in spurts for k in s):
        true = round(k / rate)
        if placed.get(k) != true:
            out[k] = placed.get(k, true + 999) - true
    return out


SPURTS = [range(100, 160), range(185, 225), range(237, 317), range(367, 397),
          range(403, 448), range(598, 648), range(660, 1100)]
"""Talk spurts of 120 ms-8.8 s after pauses of 120 ms-3 s."""


@pytest.mark.parametrize("jitter_ms", [0.0, 12.0])
@pytest.mark.parametrize("stalled", [True, False], ids=["stalled-ts", "advancing-ts"])
def test_spurts_after_pauses_land_at_their_capture_slots(stalled: bool,
                                                         jitter_ms: float) -> None:
    d = Driver()
    d.play(talk(SPURTS, stalled=stalled, jitter_ms=jitter_ms), ends(SPURTS))
    assert errors(d.placed, SPURTS) == {} and d.refused == 0
    assert d.tl.resyncs == (len(SPURTS) - 1 if stalled else 0)


@pytest.mark.parametrize("stall_ms", [100, 700, 3000])
@pytest.mark.parametrize("where", ["inside", "onset", "first"])
def test_receiver_stalls_move_nothing(where: str, stall_ms: int) -> None:
    """A receiver stall inside a spurt (its backlog stays at its RTP slots), at a spurt's
    onset after a stalled pause (the spurt's first frames come in the backlog), and at the
    stream's first packet (the stream is anchored by the on-time packets after it)."""
    spurts = [range(100, 400), range(450, 800)]
    at = {"inside": 200, "onset": 445, "first": 95}[where]
    d = Driver()
    d.play(stall(talk(spurts, jitter_ms=8.0), at, stall_ms), ends(spurts))
    assert errors(d.placed, spurts) == {} and d.refused == 0


def test_a_stalled_pause_within_a_receiver_stall_is_found_by_the_fallback() -> None:
    """The one case the window cannot settle: a spurt that starts and ends inside a
    700 ms receiver stall after a stalled pause (its frames come only in the backlog, so
    nothing tells a pause from the stall) stays right after the last spurt, contiguous;
    the next spurt is at its capture slots again."""
    spurts = [range(100, 200), range(210, 225), range(300, 400)]
    d = Driver()
    d.play(stall(talk(spurts), 205, 700), ends(spurts))
    assert all(d.placed[k] == k for k in list(spurts[0]) + list(spurts[2]))
    assert [d.placed[k] for k in spurts[1]] == list(range(200, 215))


@pytest.mark.parametrize("jump", [-50, -3000])
def test_a_timestamp_jump_back_opens_no_window_and_never_overlaps(jump: int) -> None:
    """The sender's timestamps go back `jump` frames mid-spurt (its clock restarted): as
    before the window (`slot` re-anchors after the last placed slot), none overlap."""
    frames = talk([range(100, 400)])
    frames = frames[:150] + [(k, (ts + jump * FRAME_SAMPLES) & 0xFFFF_FFFF, at)
                             for k, ts, at in frames[150:]]
    d = Driver()
    d.play(frames)
    assert d.refused == 0 and all(d.placed[k] == k for k in range(100, 250))
    got = [d.placed[k] for k in range(250, 400)]
    assert got == sorted(set(got)) and all(d.placed[k] == k for k in range(300, 400))
    assert d.windows == 1  # the stream's start; the jump opened none


def test_the_window_holds_frames_no_longer_than_window_ms() -> None:
    """Frames held from an onset are placed by the tick after `WINDOW_MS`."""
    d = Driver()
    d.play(talk([range(100, 110)])[:1])
    assert d.placed == {100: 100}
    d2 = Driver()
    tl = d2.tl
    first = talk([range(100, 110)])[0]
    assert tl.hold("u", SSRC, first[1], first[2])
    assert not tl.settle("u", SSRC, first[2] + WINDOW_MS - 1)
    assert tl.settle("u", SSRC, first[2] + WINDOW_MS)


@pytest.mark.parametrize("ppm", [-300, 300])
def test_sender_clock_drift_is_bounded(ppm: int) -> None:
    """A sender clock off by `ppm` over 10 minutes of speech in 2-8 s spurts with stalled
    pauses of 0.2-1 s: each onset re-anchors, so no frame is ever more than one slot (20 ms)
    from its capture slot, and none is refused (measured: prints the worst error)."""
    rnd = random.Random(ppm)
    spurts, k = [], 100
    while k < 30_000:
        length = rnd.randint(100, 400)
        spurts.append(range(k, k + length))
        k += length + rnd.randint(10, 50)
    d = Driver()
    d.play(talk(spurts, jitter_ms=8.0, rate=1 + ppm / 1e6), ends(spurts))
    err = errors(d.placed, spurts, 1 + ppm / 1e6)
    print(f"drift {ppm} ppm: worst {max(map(abs, err.values()), default=0)} slots, "
          f"{len(err)} frames off, resyncs {d.tl.resyncs}")
    assert d.refused == 0 and all(abs(e) <= 1 for e in err.values())


@pytest.mark.parametrize("ppm", [-300, 300])
def test_drift_within_one_long_spurt_is_bounded_by_its_length(ppm: int) -> None:
    """Without pauses nothing can correct drift (it would take dropping or stretching
    audio): 60 s of uninterrupted speech at `ppm` ends off by about `ppm` x 60 s (18 ms at
    300 ppm), within one slot of that, and nothing is refused."""
    spurts = [range(100, 3100)]
    d = Driver()
    d.play(talk(spurts, jitter_ms=8.0, rate=1 + ppm / 1e6))
    err = errors(d.placed, spurts, 1 + ppm / 1e6)
    bound = abs(ppm) * 1e-6 * 60_000 / FRAME_MS + 1
    assert d.refused == 0 and max(map(abs, err.values()), default=0) <= bound


@pytest.mark.parametrize("hiccup_ms", [80, 200])
def test_a_sender_hiccup_caught_up_slowly_moves_nothing(hiccup_ms: int) -> None:
    """discord.py's send thread (on a busy host) sends nothing for `hiccup_ms`, then
    catches up at one packet per 10 ms instead of 20 (seen on the wire): the window stays
    open while the backlog drains, so the spurt keeps its capture slots (a fixed 60 ms
    window moved the rest of the spurt later by the lateness it still had)."""
    spurts = [range(100, 400)]
    arrivals = talk(spurts, jitter_ms=4.0)
    resume = T0 + 200 * FRAME_MS + hiccup_ms
    sent = resume
    for i, (k, ts, at) in enumerate(arrivals):
        if at >= T0 + 200 * FRAME_MS and at < sent:
            arrivals[i] = (k, ts, sent)
            sent += FRAME_MS / 2
    d = Driver()
    d.play(arrivals)
    assert errors(d.placed, spurts) == {} and d.refused == 0 and d.tl.resyncs == 0


WIRE_LATENESS_MS = [
    1232.0, 1262.1, 1250.6, 1256.6, 1273.8, 1275.0, 1255.1, 1247.6, 1247.1, 1247.4, 1251.8,
    1251.5, 1247.2, 1250.4, 1250.8, 1252.5, 1247.0, 1258.9, 1247.0, 1248.2, 1286.1, 1279.8,
    1259.8, 1250.5, 1255.5, 1250.1, 1284.5, 1270.5, 1337.6, 1320.6, 1344.0, 1335.6, 1325.5,
    1318.8, 1316.6, 1296.7, 1280.0, 1262.0, 1250.5, 1247.7, 1252.4, 1247.0, 1246.7, 1246.7,
    1246.9, 1246.7, 1232.5, 1213.4, 1194.5, 1180.8]
"""Arrival - 20 ms x frame index of a discord.py sender's third spurt on the local Discord
(tests/integration/test_local_discord_pauses.py, a busy host): the first frame after a
700 ms stalled pause, 45 frames with a send-thread hiccup at frame 28 (87 ms, caught up
over 110 ms), then discord.py's 5 silence frames sent at once."""


def test_a_spurt_recorded_on_the_wire_keeps_its_pace_through_a_send_hiccup() -> None:
    """Replayed after a first spurt 700 ms (35 slots) before: the spurt lands where its
    least-delayed frames put it, all 50 contiguous (a 60 ms window moved the frames after
    the hiccup 3 slots later, leaving a gap in the spurt)."""
    spurts = [range(100, 145)]
    head = [(k, (TS0 + FRAME_SAMPLES * (k - 100)) & 0xFFFF_FFFF,
             T0 + (k + 1) * FRAME_MS + LATENCY_MS) for k in spurts[0]]
    tail = [(180 + i, (TS0 + FRAME_SAMPLES * (45 + i)) & 0xFFFF_FFFF,
             T0 + 1000 * FRAME_MS + (45 + i) * FRAME_MS + late)
            for i, late in enumerate(WIRE_LATENESS_MS)]
    d = Driver()
    d.play(head + tail, ends(spurts))
    got = [d.placed[k] for k in range(180, 230)]
    assert got == list(range(got[0], got[0] + 50)) and d.refused == 0
    assert all(d.placed[k] == k for k in spurts[0])


@pytest.mark.parametrize("per_packet_ms", [5.0, 15.0])
def test_a_backlog_still_draining_when_the_window_ends_moves_nothing(
        per_packet_ms: float) -> None:
    """A sender 400 ms behind (its send thread starved) catches up by only
    `per_packet_ms` per packet, so its backlog is still draining when the window must end
    (`MAX_WINDOW_MS`): the estimate stays, the frames keep their capture slots, no gap."""
    spurts = [range(100, 600)]
    arrivals = talk(spurts, jitter_ms=4.0)
    behind = 400.0
    for i, (k, ts, at) in enumerate(arrivals):
        if k >= 300 and behind > 0:
            arrivals[i] = (k, ts, at + behind)
            behind -= per_packet_ms
    d = Driver()
    d.play(arrivals)
    assert errors(d.placed, spurts) == {} and d.refused == 0 and d.tl.resyncs == 0


def test_a_sender_behind_for_a_while_mid_speech_moves_nothing() -> None:
    """The sender's send thread is starved mid-speech: from frame 300 its packets leave
    150 ms late, steadily, for 30 frames, then it catches up (seen with three discord.py
    senders on a busy host). No silence frame came before the gap, so it opens no window:
    the frames keep their capture slots (as after a receiver stall)."""
    spurts = [range(100, 600)]
    arrivals, prev = [], 0.0
    for k, ts, at in talk(spurts, jitter_ms=4.0):
        prev = max(at + (150.0 if 300 <= k < 330 else 0.0), prev + 0.5)  # in order
        arrivals.append((k, ts, prev))
    d = Driver()
    d.play(arrivals, ends(spurts))
    assert errors(d.placed, spurts) == {} and d.refused == 0 and d.tl.resyncs == 0
    assert d.windows == 1  # the stream's start only
