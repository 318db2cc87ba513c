"""Frames that look unencrypted under DAVE, through the local Discord, end to end.

Two things reach a DAVE receiver without a DAVE frame in them, and public threads mix them
up ("Discord sends ~5 % of frames unencrypted", pycord#3201; Snazzah/davey#15):

1. **RTP padding.** A DAVE frame followed by RTP padding (RFC 3550 section 5.1) inside
   the transport encryption no longer ends with the 0xFAFA marker. A receiver that keeps
   the padding sees an "unencrypted" frame; davey#15's captures end in `fafa01` and
   `05050505`. The recorder removes padding before DAVE (`transport.py`): every such
   frame must open. The relay's `padding_pct` knob adds it.
2. **Plain Opus from a sender** while the call is under DAVE. The DAVE protocol allows them
   only in passthrough, which discord.py opens on the receiver's session for a downgrade
   transition (protocol version 0) and for 10 s after an upgrade; outside it the receiver
   must refuse them (a relay, i.e. the server, must not be able to inject audio under
   E2EE). The recorder refuses them with davey's `UnencryptedWhenPassthroughDisabled`;
   the jitter buffer's loss concealment fills their slots, so nothing shifts in time.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import discord
import pytest

from tests.discord_rig import tone_pcm
from tests.integration import test_local_discord as base
from tests.local_discord_clients import (
    dave_ready,
    dominant_hz,
    play,
    start_client,
    stop_client,
)
from voicetrack_local.discord.relay import Faults

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PLAIN_CAUSE = "UnencryptedWhenPassthroughDisabled"

local_discord = base.local_discord
Recorder, bot_and_alice_in_voice = base.Recorder, base.bot_and_alice_in_voice


class PlainSometimesVoiceClient(discord.VoiceClient):
    """A sender that leaves `plain_pct` % of its audio frames without DAVE encryption
    (chosen with `seed`), as a client in passthrough would; `plain_sent` counts them."""

    def __init__(self, client: discord.Client, channel: Any, *, plain_pct: float,
                 seed: int) -> None:
        super().__init__(client, channel)
        self.plain_pct = plain_pct
        self.plain_sent = 0
        self._rng = random.Random(seed)

    def _get_voice_packet(self, data: bytes) -> bytes:
        state = self._connection
        if state.dave_session is not None and state.can_encrypt \
                and self._rng.random() * 100 < self.plain_pct:
            self.plain_sent += 1
            saved, state.dave_session = state.dave_session, None
            try:
                return super()._get_voice_packet(data)  # type: ignore[no-any-return]
            finally:
                state.dave_session = saved
        return super()._get_voice_packet(data)  # type: ignore[no-any-return]


def contiguous(frames: dict[int, bytes]) -> bool:
    slots = sorted(frames)
    return slots == list(range(slots[0], slots[-1] + 1))


async def test_padded_dave_frames_all_open(local_discord: Any) -> None:
    """5 % of the frames to the bot carry 1-8 octets of RTP padding: every one opens
    (decrypted 250 of 250, no failure), none is lost, the tone is intact."""
    server, info = local_discord
    assert server.relay is not None
    server.relay.set_faults(Faults(padding_pct=5, seed=11))
    alice = info["users"][0]["id"]
    async with bot_and_alice_in_voice(info) as (_bot, recorder, _bot_voice, alice_voice):
        sent = await play(alice_voice, tone_pcm(250, 440.0))  # 5 s
        await recorder.finish()
    relay, stats = server.relay.stats, recorder.conn.receiver.stats
    frames = recorder.sink.frames[alice]
    decrypt = stats.decrypt[alice]
    print(f"frames sent {sent}, padded by the relay {relay.padded}; recorded {len(frames)}; "
          f"DAVE {decrypt}")
    assert relay.padded >= 5
    assert decrypt.decrypted == 250 and not decrypt.failures and decrypt.plain == 0
    assert len(frames) == sent and stats.lost == 0 and contiguous(frames)
    assert abs(dominant_hz(frames) - 440.0) < 5


async def test_plain_frames_outside_passthrough_are_refused_and_concealed(
        local_discord: Any) -> None:
    """A sender leaves 5 % of its frames unencrypted once DAVE is up and the bot's
    passthrough window has closed: each is refused (never decoded as audio), its slot is
    concealed, the track stays contiguous and as long as what was sent."""
    _server, info = local_discord
    alice_info = info["users"][0]
    bot, bot_runner = await start_client(info["bot_token"], info["ca_bundle"])
    alice, alice_runner = await start_client(alice_info["token"], info["ca_bundle"])
    try:
        channel = bot.get_channel(int(info["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        recorder = Recorder()
        bot_voice = await recorder.join(channel)
        alice_channel = alice.get_channel(channel.id)
        assert isinstance(alice_channel, discord.VoiceChannel)
        alice_voice = await alice_channel.connect(
            cls=functools.partial(PlainSometimesVoiceClient, plain_pct=5, seed=3),
            timeout=20)
        assert isinstance(alice_voice, PlainSometimesVoiceClient)
        await dave_ready(bot_voice, alice_voice, epoch=1)
        session = bot_voice._connection.dave_session
        assert session is not None and not session.can_passthrough(int(alice_info["id"]))
        sent = await play(alice_voice, tone_pcm(250, 440.0))
        await recorder.finish()
    finally:
        await stop_client(alice, alice_runner)
        await stop_client(bot, bot_runner)
    stats = recorder.conn.receiver.stats
    frames = recorder.sink.frames[alice_info["id"]]
    decrypt = stats.decrypt[alice_info["id"]]
    plain = alice_voice.plain_sent
    print(f"frames sent {sent} ({plain} without DAVE); recorded {len(frames)} (recovered "
          f"{stats.recovered}, lost {stats.lost}); DAVE {decrypt}")
    assert plain >= 5
    assert decrypt.failures == {PLAIN_CAUSE: plain} and decrypt.plain == 0
    assert decrypt.decrypted == 250 - plain
    assert contiguous(frames) and len(frames) >= sent - 2
    assert abs(dominant_hz(frames) - 440.0) < 5
