"""`Recorder.resume_point` never opens the first window far ahead of the session clock
(review finding, fault A's defence): a last chunk that ends an hour after "now" (an earlier
namesake's, or a moved `startedAt`) opened the window at its end, and every frame until
then was dropped as late while the session showed Recording. A small lead (clock skew
between nodes) still continues at the last chunk's end, so windows never overlap then."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from kubernetes import client

from tests.discord_rig import VirtualTime
from tests.unit.test_chunker_consent import CHANNEL, GUILD
from voicetrack.resources import SessionSpec
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import Recorder

pytestmark = pytest.mark.unit

NOW_MS = 60_000
"""The session clock: one minute in."""


def recorder() -> Recorder:
    time = VirtualTime()
    spec = SessionSpec(guild_id=GUILD, channel_id=CHANNEL, chunk_seconds=5)
    return Recorder(RecorderKube(client.ApiClient(), "ns", "s"), cast(Any, None), spec,
                    SessionClock(int(time.now * 1000) - NOW_MS, time_fn=time))


@pytest.mark.parametrize("paused", [False, True])
def test_a_last_chunk_an_hour_ahead_opens_the_window_now_and_says_so(
        paused: bool, caplog: pytest.LogCaptureFixture) -> None:
    rec = recorder()
    with caplog.at_level(logging.ERROR, logger="voicetrack_recorder.recorder"):
        rec.resume_point(3_600_000, paused)
    if paused:  # resuming later opens after a `paused` gap from now, not from an hour on
        assert rec._paused_at == NOW_MS // 20
    else:
        assert rec.chunker.start_slot == NOW_MS // 20 and rec.chunker.gap is None
        assert rec.push("400000000000000001", NOW_MS // 20, b"\xfc\x01")
    assert any("ahead of the session clock" in r.getMessage() for r in caplog.records)


def test_a_lead_within_clock_skew_continues_at_the_last_chunks_end() -> None:
    rec = recorder()
    end = NOW_MS + 1000  # `recorder.MAX_CLOCK_LEAD_MS`
    rec.resume_point(end, False)
    assert rec.chunker.start_slot == end // 20 and rec.chunker.gap is None


def test_a_last_chunk_in_the_past_opens_now_after_a_restart_gap() -> None:
    rec = recorder()
    rec.resume_point(50_000, False)
    gap = rec.chunker.gap
    assert rec.chunker.start_slot == NOW_MS // 20
    assert gap is not None and (gap.start_ms, gap.end_ms, gap.cause) == (
        50_000, NOW_MS, "recorder-restart")
