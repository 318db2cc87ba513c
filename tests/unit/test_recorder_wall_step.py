"""A step of this node's wall clock mid-run (an NTP step, a VM resumed) is seen at the next
tick by comparing the wall clock with the monotonic one (`SessionClock.wall_stepped`), not
only when the session watch next measures the API server's clock (up to its 30 s later).
Before, a 3 h forward step sealed one empty window per 5 s of the jump (1420 of them in
the review's script) and ended the session as `max-duration`, over for good; a backward
step dropped frames as late until then.

The recorder runs for real (its capture loop, chunker and spool) with a wall clock and a
monotonic clock the test moves; the Kubernetes client and S3 point at a loopback port
nothing listens on (`recorder_rig`) (nothing is uploaded: no chunk is due before the step)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.unit.recorder_rig import recorder_at
from voicetrack_recorder.clock import STEP_ABOVE_MS, SessionClock

pytestmark = pytest.mark.unit


class Clocks:
    """A wall clock and a monotonic clock (s) that follow real time from given starts;
    `step` moves the wall clock alone."""

    def __init__(self, wall_s: float) -> None:
        self.begin = time.monotonic()
        self.wall0, self.offset = wall_s, 0.0

    def wall(self) -> float:
        return self.wall0 + self.offset + (time.monotonic() - self.begin)

    def mono(self) -> float:
        return time.monotonic() - self.begin

    def step(self, seconds: float) -> None:
        self.offset += seconds


class Waiting:
    """A source that sends nothing and ends when told."""

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


def test_the_wall_clock_against_the_monotonic_one() -> None:
    clocks = Clocks(1_000.0)
    clock = SessionClock(0, time_fn=clocks.wall, mono_fn=clocks.mono)
    assert clock.wall_stepped() is None
    clocks.step(STEP_ABOVE_MS / 1000 - 1)  # within the bound: a slew's worth, not a step
    assert clock.wall_stepped() is None
    clocks.step(-2 * STEP_ABOVE_MS / 1000)
    assert "stepped -" in (clock.wall_stepped() or "")
    assert SessionClock(0, time_fn=lambda: 5.0).wall_stepped() is None  # a replay: off
    assert SessionClock(0).mono_fn is time.monotonic  # the real clocks: on


@pytest.mark.parametrize("step_s", [3 * 3600.0, -60.0])
async def test_a_wall_clock_step_mid_run_ends_it_as_clock_stepped(step_s: float,
                                                                   tmp_path: Path) -> None:
    clocks = Clocks(1_000.0)
    recorder = recorder_at(tmp_path, SessionClock(
        int(clocks.wall() * 1000), time_fn=clocks.wall, mono_fn=clocks.mono),
        chunkSeconds=5, limits={"maxDurationSeconds": 7200})
    uploader = recorder.uploader
    recorder.flush.grace_s = 1.0  # nothing is reachable: the uploads give up soon
    recorder.chunker.open(recorder.clock.now_slot())
    run = asyncio.create_task(recorder.run(Waiting()))
    await asyncio.sleep(0.5)
    clocks.step(step_s)
    result = await asyncio.wait_for(run, 30)
    assert result.reason == "clock-stepped", result
    # no flood of empty windows: the open window alone is sealed, at the time before the
    # step, and stays in the spool for the restarted container (nothing is reachable)
    assert [p.spec.index for p in recorder._pending] == [0]
    assert recorder._pending[0].spec.end_ms <= 2000, recorder._pending[0].spec
    assert recorder.chunker.next_index == 1 and uploader.stats.chunks == 0


def test_the_flush_deadline_cuts_the_api_read_timeout(tmp_path: Path) -> None:
    """Arming the flush deadline (a forced or error end) shortens the Kubernetes calls'
    read timeout to `stop_read_s`, so an attempt under way at the deadline ends inside the
    termination grace; while recording it is the longer `read_s`."""
    recorder = recorder_at(tmp_path, SessionClock(0), 1 << 20)
    kube = recorder.kube
    assert kube.timeouts.request[1] == kube.timeouts.read_s > kube.timeouts.stop_read_s
    recorder.flush.arm(0)
    assert kube.timeouts.request[1] == kube.timeouts.stop_read_s
