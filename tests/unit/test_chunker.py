"""The chunker: frames on the 20 ms slot grid, sealed into aligned windows."""

from __future__ import annotations

import pytest

from voicetrack.audio import OPUS_SILENCE_FRAME
from voicetrack.chunkspec import Gap
from voicetrack.oggopus import decode_ogg_opus, encode_ogg_opus
from voicetrack_recorder.chunker import Chunker

pytestmark = pytest.mark.unit


def pkt(n: int) -> bytes:
    """A distinct fake 20 ms CELT packet (TOC 0xFC: fullband 20 ms stereo, one frame)."""
    return bytes([0xFC]) + n.to_bytes(4, "big")


def test_seal_fills_silence_and_aligns_every_track() -> None:
    c = Chunker(chunk_slots=50, first_index=3)
    c.open(100)
    assert c.push("a", 100, pkt(1))
    assert c.push("a", 149, pkt(2))
    assert c.push("b", 120, pkt(3))
    assert not c.push("a", 100, pkt(9))  # duplicate slot
    assert not c.push("a", 99, pkt(9))  # before the window
    assert not c.push("a", 101, b"")  # an empty packet is no Opus frame
    assert c.push("b", 150, pkt(4))  # next window: kept for it
    chunk = c.seal()
    assert chunk is not None
    assert (chunk.index, chunk.start_ms, chunk.end_ms) == (3, 2000, 3000)
    a, b = chunk.tracks
    assert [len(a.packets), len(b.packets)] == [50, 50]
    assert a.packets[0] == pkt(1) and a.packets[49] == pkt(2)
    assert a.packets[1:49] == [OPUS_SILENCE_FRAME] * 48
    assert (a.frames, a.first_ms, a.last_ms) == (2, 2000, 2980)
    assert (b.frames, b.first_ms) == (1, 2400)
    nxt = c.seal()
    assert nxt is not None and nxt.index == 4 and nxt.start_ms == 3000
    assert [t.user_id for t in nxt.tracks] == ["b"] and nxt.tracks[0].packets[0] == pkt(4)
    assert c.stats.duplicate == 1 and c.stats.late == 1 and c.stats.empty == 1


def test_pause_closes_early_and_resume_carries_the_gap() -> None:
    c = Chunker(chunk_slots=500)
    c.open(0)
    c.push("a", 10, pkt(1))
    first = c.seal(120, reopen=False)
    assert first is not None and (first.start_ms, first.end_ms) == (0, 2400)
    assert not c.push("a", 130, pkt(2))  # closed while paused
    gap = Gap(start_ms=2400, end_ms=4000, cause="paused")
    c.open(200, gap)
    c.push("a", 210, pkt(3))
    second = c.seal(260, reopen=False)
    assert second is not None and second.gap == gap and second.start_ms == 4000
    assert c.stats.closed == 1


def test_empty_window_seals_to_nothing_and_speakerless_window_has_no_tracks() -> None:
    c = Chunker(chunk_slots=10)
    c.open(5)
    assert c.seal(5, reopen=False) is None
    c.open(5)
    chunk = c.seal()
    assert chunk is not None and chunk.tracks == [] and chunk.end_ms - chunk.start_ms == 200


def test_sealed_track_round_trips_through_ogg_opus() -> None:
    c = Chunker(chunk_slots=75)
    c.open(0)
    for s in range(0, 75, 3):
        c.push("a", s, pkt(s))
    chunk = c.seal()
    assert chunk is not None
    track = chunk.tracks[0]
    stream = decode_ogg_opus(encode_ogg_opus(track.packets, serial=7))
    assert stream.packets == track.packets
    assert stream.pre_skip == 0 and stream.samples == 75 * 960 == stream.granule


def test_each_track_takes_the_phase_of_its_last_frame_in_the_window() -> None:
    """A track's `phase_samples` is its speaker's last frame's in the window (a change
    inside the window takes effect at the next chunk); frames of the next window keep
    theirs for it; a speaker pushed without one (the files source) is 0; a phase of a
    whole slot is refused."""
    c = Chunker(chunk_slots=50)
    c.open(0)
    assert c.push("a", 0, pkt(1), 350)
    assert c.push("a", 30, pkt(2), 700)  # a new stream of "a"
    assert c.push("a", 60, pkt(3), 120)  # next window
    assert c.push("b", 10, pkt(4))
    with pytest.raises(ValueError, match="phase 960"):
        c.push("b", 11, pkt(5), 960)
    first = c.seal()
    assert first is not None
    assert [(t.user_id, t.phase_samples) for t in first.tracks] == [("a", 700), ("b", 0)]
    assert c.push("a", 55, pkt(6), 700)  # out of order: the last by slot decides
    second = c.seal()
    assert second is not None
    assert [(t.user_id, t.phase_samples) for t in second.tracks] == [("a", 120)]
    assert not c._phases  # nothing kept for sealed slots
