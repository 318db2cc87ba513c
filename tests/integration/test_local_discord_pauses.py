"""Speech with pauses on the wire (issue 12): a discord.py member talks in spurts through
the local Discord, sending nothing while silent, as Discord clients do; discord.py's send
path keeps the RTP timestamp stalled across each pause (it advances it by 960 per packet
sent, `VoiceClient.send_audio_packet`). The bot records with the recorder's receive pipeline
(`make_receiver` + `attach`, as `DiscordSource` does) into a sink that notes when each frame
was pushed.

Shows: each spurt starts at its true time ± 20 ms on the slot grid (the slot holding the
send time of its first packet less 20 ms, the audio it carries), every packet sent is
recorded, none refused, and every frame reaches the sink within the chunker's 400 ms seal
delay of its slot's end (so none would be dropped as `late`). Fails without the timeline's
onset window: each spurt after a pause then starts right after the previous one (the pause
lost, until `resync_ms` of disagreement re-anchors it mid-spurt), and frames reach the sink
over a second after their slot.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.discord_rig import CaptureSink, tone_pcm
from tests.integration import test_local_discord as base
from tests.local_discord_clients import dominant_hz, play
from voicetrack.audio import FRAME_MS, OPUS_SILENCE_FRAME

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

local_discord = base.local_discord
bot_and_alice_in_voice = base.bot_and_alice_in_voice

SEAL_MS = 400
"""The chunker seals a window 400 ms after its end (DESIGN.md); a frame pushed later than
that after its slot ends would be dropped as `late`."""
SPURTS = [(0.0, 40, 330.0), (0.3, 30, 440.0), (0.7, 45, 550.0), (1.2, 35, 660.0),
          (0.06, 30, 770.0)]
"""(pause before in s, frames, tone Hz) of each talk spurt."""


class PushTimes(CaptureSink):
    """A CaptureSink that also notes the wall time (Unix ms) each slot was pushed at."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed_ms: dict[str, dict[int, float]] = {}

    def push(self, user_id: str, slot: int, packet: bytes, phase: int = 0) -> bool:
        self.pushed_ms.setdefault(user_id, {})[slot] = time.time() * 1000
        return super().push(user_id, slot, packet, phase)


def runs(frames: dict[int, bytes]) -> list[list[int]]:
    """The slots of each run of consecutive non-silence frames."""
    out: list[list[int]] = []
    for slot in sorted(s for s, p in frames.items() if p != OPUS_SILENCE_FRAME):
        if out and slot == out[-1][-1] + 1:
            out[-1].append(slot)
        else:
            out.append([slot])
    return out


async def test_spurts_after_stalled_pauses_land_at_their_true_time(local_discord: Any
                                                                  ) -> None:
    _server, info = local_discord
    alice_id = info["users"][0]["id"]
    async with bot_and_alice_in_voice(info) as (_bot, recorder, _bot_voice, alice_voice):
        sink = PushTimes()
        recorder.conn.receiver.sink = sink
        t0 = recorder.conn.receiver.clock.t0_ms
        sent_ms: list[tuple[int, float]] = []  # (RTP timestamp, Unix ms) of each packet
        send = alice_voice.send_audio_packet

        def noted(data: bytes, *, encode: bool = True) -> None:
            sent_ms.append((alice_voice.timestamp, time.time() * 1000))
            send(data, encode=encode)

        alice_voice.send_audio_packet = noted  # type: ignore[method-assign]
        firsts, total = [], 0
        for pause_s, frames, hz in SPURTS:
            await asyncio.sleep(pause_s)
            firsts.append(len(sent_ms))
            total += await play(alice_voice, tone_pcm(frames, hz))
        await recorder.finish()

    stats = recorder.conn.receiver.stats
    frames = sink.frames[alice_id]
    got = runs(frames)
    true_ms = [sent_ms[i][1] - FRAME_MS - t0 for i in firsts]
    true_slot_ms = [t // FRAME_MS * FRAME_MS for t in true_ms]  # on the slot grid
    placed_ms = [run[0] * FRAME_MS for run in got]
    lag = max(sink.pushed_ms[alice_id][s] - t0 - (s + 1) * FRAME_MS for s in frames)
    print(f"spurt starts: true {[round(t) for t in true_ms]} ms, placed {placed_ms} ms; "
          f"resyncs {recorder.conn.receiver.timeline.resyncs}; worst push lag {lag:.0f} ms; "
          f"sent {total}, recorded {len(frames)}, dropped {dict(stats.dropped)}")
    stalled = [sent_ms[i][0] - sent_ms[i - 1][0] for i in firsts[1:]]
    assert stalled == [960] * (len(SPURTS) - 1)  # discord.py: timestamps stalled in pauses
    assert [len(run) for run in got] == [n for _p, n, _h in SPURTS]
    assert all(abs(placed - true) <= 20
               for placed, true in zip(placed_ms, true_slot_ms, strict=True))
    assert len(frames) == total and stats.lost == 0 and not stats.dropped
    assert lag <= SEAL_MS
    for run, (_p, _n, hz) in zip(got, SPURTS, strict=True):
        assert abs(dominant_hz({s: frames[s] for s in run}) - hz) < 10
