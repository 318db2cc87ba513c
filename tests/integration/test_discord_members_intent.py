"""A Discord application without the Server Members Intent still records (review finding
#4): role opt-outs make the recorder ask for GUILD_MEMBERS (privileged); Discord refuses
it at IDENTIFY with close 4014 "Disallowed intent(s)", which discord.py raises as
`PrivilegedIntentsRequired`, and the source used to fail the session for good (exit 2).
`open_gateway` now connects again without the intent, the role opt-outs still hold from
the roles Discord sends with voice states, and the source says what it records without
(`degraded`, in the recorder's termination message).

The real local Discord (its knob `World.privileged_intents` stands for the developer
portal's toggle) and the recorder's own `DiscordSource`, in-process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import discord
import pytest
import yarl

from tests.discord_rig import CaptureSink
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_local.discord.world import VoiceState
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.discord.endpoint import DiscordEndpoint
from voicetrack_recorder.discord.login import MEMBERS_REFUSED
from voicetrack_recorder.discord.source import DiscordSource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.parametrize("allowed", [False, True])
async def test_role_opt_outs_record_with_or_without_the_members_intent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: bool) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        yarl.URL(str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)))
    server = LocalDiscord(tmp_path / "discord", Settings(users=["alice", "bob"]))
    world = server.world
    role = world.add_role("not-recorded")
    alice, bob = world.users
    alice.roles = [role]
    for user in (alice, bob):  # in the voice channel before the recorder comes
        world.voice_states[user.id] = VoiceState(user.id, world.voice.id, f"s{user.id}")
    if not allowed:
        world.privileged_intents = 0  # the application lacks the Server Members Intent
    info = await server.start()
    try:
        consent = Consent(SessionClock(int(time.time() * 1000)), role_ids=[str(role)])
        source = DiscordSource(
            token=info["bot_token"], guild_id=info["guild_id"],
            channel_id=info["voice_channel_id"], clock=SessionClock(int(time.time() * 1000)),
            sink=CaptureSink(), consent=consent,
            endpoint=DiscordEndpoint(info["api_base"], info["gateway_url"],
                                     info["ca_bundle"]))
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(stop))
        deadline = time.monotonic() + 30
        while not (world.bot.id in world.voice_states and {str(alice.id), str(bob.id)}
                   <= consent.seen):
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "the source never joined and saw both"
            await asyncio.sleep(0.05)
        assert consent.excluded(str(alice.id)) and not consent.excluded(str(bob.id))
        assert [(o.user_id, o.via) for o in consent.opted_out()] == [(str(alice.id), "role")]
        assert server.gateway is not None
        assert server.gateway.refused_intents == (0 if allowed else 1)
        assert source.degraded == (None if allowed else MEMBERS_REFUSED)
        stop.set()
        await asyncio.wait_for(task, 30)  # a clean end, no InvalidInputError
    finally:
        await server.stop()
