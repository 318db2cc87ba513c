"""Stopping recording at a slot without sealing (a pause, the end of a run): the window
keeps taking the late frames for the slots before the stop until it is sealed by the seal
rule, refuses every frame from the stop on, and a resume before that seal is queued. Before,
a pause or a stop sealed at once and the frames a jitter buffer still held were dropped
(`closed`); tests/e2e/test_recorder_tail.py shows it through the whole recorder."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.unit.test_chunker import pkt
from voicetrack.chunkspec import Gap
from voicetrack_recorder.chunker import Chunker, SealedChunk
from voicetrack_recorder.sealing import SEAL_DELAY_SLOTS, seal_tail

pytestmark = pytest.mark.unit


def test_a_stopped_window_takes_late_frames_before_the_stop_and_none_after() -> None:
    c = Chunker(chunk_slots=500)
    c.open(0)
    c.stop(100)
    assert c.push("a", 99, pkt(1))  # held by a jitter buffer, arrives after the stop
    assert not c.push("a", 100, pkt(2)) and not c.push("a", 130, pkt(3))
    assert not c.due(99) and c.due(100)
    chunk = c.seal()
    assert chunk is not None and (chunk.start_ms, chunk.end_ms) == (0, 2000)
    assert chunk.tracks[0].last_ms == 99 * 20
    assert not c.is_open and c.stop_slot is None  # nothing reopens after a stop
    assert not c.push("a", 101, pkt(4))
    assert c.stats.closed == 3


def test_a_resume_before_the_seal_is_queued_with_its_gap() -> None:
    c = Chunker(chunk_slots=500)
    c.open(0)
    c.stop(100)
    gap = Gap(start_ms=2000, end_ms=2300, cause="paused")
    c.open(115, gap)  # resumed 300 ms later, the paused window still unsealed
    assert c.push("a", 95, pkt(1))  # late frame of the paused window
    assert not c.push("a", 105, pkt(2))  # in the pause: never kept
    assert c.push("a", 120, pkt(3))  # after the resume: kept for the next window
    paused = c.seal()
    assert paused is not None and paused.end_ms == 2000 and paused.tracks[0].frames == 1
    assert c.start_slot == 115 and c.gap == gap and c.stop_slot is None
    nxt = c.seal()
    assert nxt is not None and (nxt.start_ms, nxt.gap) == (2300, gap)
    assert nxt.tracks[0].first_ms == 2400 and nxt.tracks[0].frames == 1


def test_a_resume_at_the_stop_slot_cancels_the_stop() -> None:
    c = Chunker(chunk_slots=500)
    c.open(0)
    c.stop(100)
    c.open(100)
    assert c.stop_slot is None and c.end_slot == 500 and c.push("a", 120, pkt(1))


def test_pause_resume_pause_before_any_seal_keeps_each_stretch() -> None:
    c = Chunker(chunk_slots=500)
    c.open(0)
    c.stop(100)
    c.open(110, Gap(start_ms=2000, end_ms=2200, cause="paused"))
    c.stop(130)  # paused again: the queued stretch ends at 130
    c.stop(140)  # the end of the run while paused: the earlier stop holds
    assert [c.push("a", s, pkt(s)) for s in (99, 105, 110, 129, 130, 140)] == [
        True, False, True, True, False, False]
    first, second = c.seal(), c.seal()
    assert first is not None and second is not None and c.seal() is None
    assert (first.end_ms, second.start_ms, second.end_ms) == (2000, 2200, 2600)
    assert second.tracks[0].frames == 2 and not c.is_open


def test_a_stop_after_a_due_window_seals_both_windows_up_to_it() -> None:
    """The nominal end passed but the window still waits in the seal delay when the stop
    comes: the next window runs from that end to the stop."""
    c = Chunker(chunk_slots=50)
    c.open(0)
    c.stop(60)
    first = c.seal()
    assert first is not None and first.end_ms == 1000 and c.start_slot == 50
    second = c.seal()
    assert second is not None and (second.start_ms, second.end_ms) == (1000, 1200)
    assert not c.is_open


async def test_seal_tail_waits_for_the_seal_rule_then_seals_at_the_stop() -> None:
    """Frames held past the stop arrive while `seal_tail` waits (here 200 ms after it):
    they are in the last chunk; the window is sealed once the rule reaches the stop."""
    c = Chunker(chunk_slots=500)
    c.open(0)
    t0 = time.monotonic()
    now = lambda: 100 + int((time.monotonic() - t0) * 50)  # noqa: E731  (slot clock)
    sealed: list[SealedChunk] = []

    async def spool(chunk: SealedChunk | None) -> None:
        assert chunk is not None
        sealed.append(chunk)

    async def late_frames() -> None:
        await asyncio.sleep(0.2)
        for s in range(85, 105):
            c.push("a", s, pkt(s))

    late = asyncio.create_task(late_frames())
    await seal_tail(c, 100, lambda: now() - SEAL_DELAY_SLOTS, spool, wait_s=2.0)
    await late
    waited = time.monotonic() - t0
    (chunk,) = sealed
    assert chunk.end_ms == 2000 and chunk.tracks[0].frames == 15  # slots 85..99
    assert 0.38 <= waited < 1.0, waited


async def test_seal_tail_does_not_wait_for_an_ended_source_nor_past_its_bound() -> None:
    for wait_s in (0.0, 0.3):  # the source ended; a source holding the rule back
        c = Chunker(chunk_slots=50)
        c.open(0)
        sealed: list[SealedChunk | None] = []

        async def spool(chunk: SealedChunk | None, into: list[SealedChunk | None] = sealed
                        ) -> None:
            into.append(chunk)

        t0 = time.monotonic()
        await seal_tail(c, 120, lambda: 0, spool, wait_s=wait_s)
        assert wait_s <= time.monotonic() - t0 < wait_s + 0.2
        assert [(s.start_ms, s.end_ms) for s in sealed if s] == [
            (0, 1000), (1000, 2000), (2000, 2400)]


def test_unsealed_lists_the_open_window_and_those_queued_behind_its_stop() -> None:
    """`Chunker.unsealed`: (start slot, gap, stop slot) of each stretch not sealed yet."""
    c = Chunker(chunk_slots=500)
    assert c.unsealed() == []
    c.open(0)
    assert c.unsealed() == [(0, None, None)]
    c.stop(100)
    gap = Gap(start_ms=2000, end_ms=2300, cause="paused")
    c.open(115, gap)
    c.stop(130)
    assert c.unsealed() == [(0, None, 100), (115, gap, 130)]
    c.seal()
    assert c.unsealed() == [(115, gap, 130)]
    c.seal()
    assert c.unsealed() == []
