"""`Recorder.resume_point` never opens the first window far ahead of the session clock
(review finding, fault A's defence): a last chunk that ends an hour after "now" (an earlier
namesake's, or a moved `startedAt`) opened the window at its end, and every frame until
then was dropped as late while the session showed Recording. A lead up to
MAX_CLOCK_LEAD_MS (clock skew between nodes) continues at the last chunk's end, so windows
never overlap; a larger one is a fault the session shows (the recorder exits 2)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from kubernetes import client

from tests.discord_rig import VirtualTime
from tests.unit.test_chunker_consent import CHANNEL, GUILD
from voicetrack.errors import InvalidInputError
from voicetrack.resources import SessionSpec
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import MAX_CLOCK_LEAD_MS, Recorder

pytestmark = pytest.mark.unit

NOW_MS = 60_000
"""The session clock: one minute in."""


def recorder() -> Recorder:
    time = VirtualTime()
    spec = SessionSpec(guild_id=GUILD, channel_id=CHANNEL, chunk_seconds=5)
    return Recorder(RecorderKube(client.ApiClient(), "ns", "s"), cast(Any, None), spec,
                    SessionClock(int(time.now * 1000) - NOW_MS, time_fn=time))


@pytest.mark.parametrize("paused", [False, True])
def test_a_last_chunk_an_hour_ahead_is_a_fault_the_session_shows(paused: bool) -> None:
    """The recorder exits 2 with the reason (the session shows Failed, its chunks are
    promoted as they are), rather than record nothing for an hour or write windows over
    the last chunk's (a promotion refused for ever, second review)."""
    with pytest.raises(InvalidInputError, match="ahead of this node's session clock"):
        recorder().resume_point(3_600_000, paused)


@pytest.mark.parametrize("lead_ms", [1000, 1500, MAX_CLOCK_LEAD_MS])
def test_a_lead_within_clock_skew_continues_at_the_last_chunks_end(lead_ms: int) -> None:
    """Windows never overlap the last chunk's (before the second review, a lead over 1 s
    opened now: overlapping windows, which promotion refuses)."""
    rec = recorder()
    end = NOW_MS + lead_ms
    rec.resume_point(end, False)
    assert rec.chunker.start_slot == end // 20 and rec.chunker.gap is None


def test_a_last_chunk_in_the_past_opens_now_after_a_restart_gap() -> None:
    rec = recorder()
    rec.resume_point(50_000, False)
    gap = rec.chunker.gap
    assert rec.chunker.start_slot == NOW_MS // 20
    assert gap is not None and (gap.start_ms, gap.end_ms, gap.cause) == (
        50_000, NOW_MS, "recorder-restart")
