"""Clock skew between the recorder's node, the operator and the API server (fault: the
operator checks each chunk's window against the API server's timestamps plus 60 s, while
`startedAt` came from the operator's clock and windows from the recorder node's; skew past
60 s had every chunk of a session refused, for good: no audio, the recorder "recording").

The recorder measures its clock against the API server's `Date` header and takes the
session's origin on the API server's clock (`voicetrack_recorder.clock.session_origin`).
Here a recorder clock 90 s ahead, and an operator clock 90 s behind, each make windows the
operator's real check (`isolation.chunk_refusal`) accepts; without the correction (the
SessionClock built from `startedAt` as before) the same windows are refused.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.unit.recorder_rig import recorder_at
from tests.unit.test_operator_isolation import SESSION, claim
from voicetrack.errors import TemporaryFailure
from voicetrack_operator.services.isolation import chunk_refusal
from voicetrack_recorder.clock import (
    CORRECT_ABOVE_MS,
    STEP_ABOVE_MS,
    SessionClock,
    server_offset_ms,
    session_origin,
)

pytestmark = pytest.mark.unit

SKEW_S = 90
CREATED = SESSION.created
"""The session's creationTimestamp (the API server's clock)."""


def date_header(at: datetime) -> str:
    """The `Date` header the API server sends at `at` (IMF-fixdate, whole seconds)."""
    return format_datetime(at.replace(microsecond=0), usegmt=True)


def window_checked(clock: SessionClock, server_now: datetime) -> str | None:
    """The operator's verdict on a 10 s chunk ending at `clock`'s session time now, created
    at `server_now` (the API server's clock)."""
    end = clock.now_slot() * 20
    return chunk_refusal(claim(end - 10_000, end, created=server_now), SESSION, server_now,
                         None)


@pytest.mark.parametrize("node_ahead_s", [SKEW_S, -SKEW_S])
def test_a_node_clock_off_by_90_s_is_corrected(node_ahead_s: int) -> None:
    started_ms = int((CREATED + timedelta(seconds=0.4)).timestamp() * 1000)  # the operator
    server_now = CREATED + timedelta(minutes=10, seconds=0.3)
    local_s = server_now.timestamp() + node_ahead_s
    offset = server_offset_ms(local_s - 0.02, local_s + 0.02, date_header(server_now))
    assert abs(offset - node_ahead_s * 1000) <= 600
    origin = session_origin(started_ms, CREATED, offset)
    assert origin.server_ms == started_ms and origin.offset_ms == offset
    word = "ahead of" if node_ahead_s > 0 else "behind the API server"
    assert [n for n in origin.notes if word in n]
    clock = SessionClock(origin.t0_ms, time_fn=lambda: local_s)
    assert abs(clock.now_ms() - (server_now.timestamp() * 1000 - started_ms)) <= 600
    assert window_checked(clock, server_now) is None
    if node_ahead_s > 0:  # as before: every chunk refused
        before = SessionClock(started_ms, time_fn=lambda: local_s)
        assert "ends after the session's elapsed time" in str(
            window_checked(before, server_now))


def test_an_operator_clock_behind_by_90_s_is_corrected() -> None:
    """`startedAt` 90 s before the session existed: session time counts from its
    creation (on the API server's clock), so windows are not 90 s ahead."""
    started_ms = int((CREATED - timedelta(seconds=SKEW_S)).timestamp() * 1000)
    server_now = CREATED + timedelta(minutes=10)
    origin = session_origin(started_ms, CREATED, 0)
    assert origin.server_ms == int(CREATED.timestamp() * 1000)
    assert "operator's clock is behind" in origin.notes[0]
    clock = SessionClock(origin.t0_ms, time_fn=lambda: server_now.timestamp())
    assert window_checked(clock, server_now) is None
    before = SessionClock(started_ms, time_fn=lambda: server_now.timestamp())
    assert "ends after the session's elapsed time" in str(window_checked(before, server_now))


def test_a_healthy_clock_is_left_exactly_as_it_was() -> None:
    """Within CORRECT_ABOVE_MS nothing moves: session time stays `now - startedAt`, and a
    restarted recorder on the same node continues the same time."""
    started_ms = int(CREATED.timestamp() * 1000) + 700
    for offset in (0, CORRECT_ABOVE_MS, -CORRECT_ABOVE_MS, None):
        origin = session_origin(started_ms, CREATED, offset)
        assert origin.t0_ms == started_ms and origin.offset_ms == 0
    assert session_origin(started_ms, CREATED, 0).notes == ()
    assert "could not be read" in session_origin(started_ms, None, None).notes[0]
    assert session_origin(started_ms, None, 5000).t0_ms == started_ms + 5000


def test_the_date_header_is_read_at_its_seconds_middle() -> None:
    at = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC)
    assert date_header(at) == "Fri, 04 Dec 2026 10:00:00 GMT"
    assert server_offset_ms(at.timestamp() + 0.4, at.timestamp() + 0.6,
                            date_header(at)) == 0
    with pytest.raises(ValueError):
        server_offset_ms(0.0, 0.0, "not a date")


def test_a_step_of_the_node_clock_is_noticed_past_its_bound() -> None:
    clock = SessionClock(0, offset_ms=90_000)
    assert clock.stepped(None) is None
    assert clock.stepped(90_000 + STEP_ABOVE_MS) is None
    assert "moved 10001 ms" in str(clock.stepped(90_000 + STEP_ABOVE_MS + 1))
    assert "moved -30000 ms" in str(clock.stepped(60_000))
    assert SessionClock(0).stepped(10**6) is None  # never measured: nothing to compare


class IdleSource:
    """A source that delivers nothing until stopped."""

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


async def test_a_recorder_whose_node_clock_stepped_ends_with_a_failure(tmp_path: Path) -> None:
    """The pause watch re-reads the session (and the offset) while recording: a step past
    STEP_ABOVE_MS ends the run with a TemporaryFailure (the container restarts, measures
    again and continues at the next index) instead of sealing windows that far off."""
    clock = SessionClock(0, time_fn=lambda: 100.0, offset_ms=1500)
    recorder = recorder_at(tmp_path, clock, chunkSeconds=5)
    kube = recorder.kube
    recorder.flush.grace_s = 0.2
    recorder.chunker.open(clock.now_slot())
    kube.clock_offset_ms = 1500 + 800  # measuring noise: recording goes on

    async def step() -> None:
        await asyncio.sleep(0.3)
        assert not run.done()
        kube.clock_offset_ms = 1500 + 95_000

    run = asyncio.create_task(recorder.run(IdleSource()))
    await step()
    result = await asyncio.wait_for(run, 30)
    assert result.reason == "clock-stepped"
    assert isinstance(result.error, TemporaryFailure)
    assert "moved 95000 ms" in str(result.error)
