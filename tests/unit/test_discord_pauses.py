"""Talk spurts through the production receive path (the rig of tests/discord_rig.py: real
davey, real AEAD, real libopus; virtual time): a speaker that pauses must have every frame
at the slot it was captured in, whether its RTP timestamp stalls across the pause (discord.py
and Discord clients send nothing while silent and go on from the next timestamp) or
advances, with network jitter, and with the recorder stalled when a spurt starts.

A speaker's frame `k` of a spurt starting at session slot `s` is captured during slot
`s + k` and leaves the relay `LATENCY_MS` (+ jitter) after that slot ends; the recorder
must put it at slot `s + k` exactly (the anchor is `arrival - 20 ms`, rounded down).
"""

from __future__ import annotations

import random

import pytest

from tests.discord_rig import Harness, Speaker, encode_frames, tone_pcm
from voicetrack.audio import FRAME_SAMPLES, OPUS_SILENCE_FRAME

pytestmark = pytest.mark.unit

LATENCY_MS = 6
START_SLOT = 50


def spurts(plan: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`(pause slots before, frames)` → `(first slot, frames)` of each talk spurt; each
    spurt is followed by its five silence frames, then the pause."""
    out, slot = [], START_SLOT
    for pause, frames in plan:
        slot += pause
        out.append((slot, frames))
        slot += frames + 5
    return out


def schedule(h: Harness, speaker: Speaker, talk: list[tuple[int, int]], *,
             stalled: bool = True, jitter_ms: float = 0.0, seed: int = 1,
             stall: tuple[int, int] | None = None) -> tuple[list[tuple[float, bytes]],
                                                             dict[int, bytes]]:
    """Datagrams `(session ms, datagram)` of `speaker` talking in the spurts `talk`; the
    RTP timestamp `stalled` across pauses or advancing with real time. `stall`: the
    recorder reads nothing from slot `stall[0]` for `stall[1]` ms, then drains its backlog
    in 2 ms. Returns the schedule and the expected track (slot → Opus packet)."""
    rnd = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    expected: dict[int, bytes] = {}
    last_end: int | None = None
    for n, (first, frames) in enumerate(talk):
        if last_end is not None and not stalled:
            speaker.timestamp = (speaker.timestamp + (first - last_end) * FRAME_SAMPLES) \
                & 0xFFFF_FFFF
        packets = encode_frames(tone_pcm(frames, 300 + 100 * n)) + [OPUS_SILENCE_FRAME] * 5
        for k, packet in enumerate(packets):  # five silence frames end the spurt
            at = (first + k + 1) * 20 + LATENCY_MS + rnd.uniform(0, jitter_ms)
            out.append((at, h.rig.packet(speaker, packet)))
            expected[first + k] = packet
        last_end = first + len(packets)
    if stall is not None:
        start_ms, resume = stall[0] * 20, stall[0] * 20 + stall[1]
        queued = [i for i, (at, _) in enumerate(out) if start_ms <= at < resume]
        for n, i in enumerate(queued):
            out[i] = (resume + 2 * n / len(queued), out[i][1])
    return out, expected


async def run(talk: list[tuple[int, int]], **options: object) -> tuple[Harness, dict[int, bytes],
                                                                      dict[int, bytes]]:
    h = await Harness.open()
    (a,) = await h.rig.join(222222222222222222)
    await h.settle()
    plan, expected = schedule(h, a, talk, **options)  # type: ignore[arg-type]
    await h.play(plan)
    await h.finish()
    return h, h.sink.frames.get("222222222222222222", {}), expected


def misplaced(got: dict[int, bytes], expected: dict[int, bytes]) -> dict[int, int]:
    """Frames not at their capture slot: expected slot → offset (slots) where it landed,
    or 0 when it is missing."""
    where = {packet: slot for slot, packet in got.items()}
    out = {}
    for slot, packet in expected.items():
        if got.get(slot) != packet:
            out[slot] = where.get(packet, slot) - slot
    return out


PAUSES = [(0, 60), (25, 40), (12, 80), (50, 30), (3, 45), (150, 50)]
"""Talk spurts of 0.6-1.6 s after pauses of 60 ms-3 s (after their silence frames)."""


@pytest.mark.parametrize("stalled", [True, False], ids=["stalled-ts", "advancing-ts"])
@pytest.mark.parametrize("jitter_ms", [0.0, 12.0])
async def test_pauses_keep_every_frame_at_its_capture_slot(stalled: bool,
                                                           jitter_ms: float) -> None:
    h, got, expected = await run(spurts(PAUSES), stalled=stalled, jitter_ms=jitter_ms)
    assert misplaced(got, expected) == {}
    assert set(got) == set(expected)
    stats = h.receiver.stats
    assert stats.lost == 0 and not stats.dropped


async def test_a_recorder_stall_in_a_spurt_after_a_stalled_pause_moves_nothing() -> None:
    """A 700 ms stall of the recorder in the middle of the third spurt (its backlog drained
    at once): still every frame at its capture slot."""
    talk = spurts(PAUSES)
    first, _ = talk[2]
    _h, got, expected = await run(talk, stall=(first + 20, 700))
    assert misplaced(got, expected) == {}


async def test_a_spurt_that_starts_during_a_recorder_stall() -> None:
    """The speaker starts talking again 200 ms into a 600 ms stall of the recorder (after
    a 1 s pause with its timestamp stalled): the spurt's first frames come in the backlog,
    the later ones on time; all land at their capture slots."""
    talk = spurts([(0, 60), (50, 100)])
    first, _ = talk[1]
    _h, got, expected = await run(talk, stall=(first - 10, 600))
    assert misplaced(got, expected) == {}


async def test_a_stream_that_starts_during_a_recorder_stall() -> None:
    """The speaker's first packets reach a recorder stalled for 500 ms."""
    _h, got, expected = await run(spurts([(0, 100)]), stall=(START_SLOT - 5, 500))
    assert misplaced(got, expected) == {}
