"""The recorder's `DiscordSource` leaves cleanly even when cancelled right after stop.

`Recorder.run` sets the source's stop event, waits for its uploads, then cancels the
source task. A cancel landing while the source is leaving (restoring the nickname, leaving
voice, logging out) used to cut that short: the bot kept `[REC]` after the recording (seen
in tests/e2e/discord/test_discord_session.py, where the recorder's last upload took 2 ms). Real
local Discord, real discord.py, in-process; the cancel comes after a few event-loop steps,
as the recorder's does when its uploads are already done.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import discord
import pytest
import yarl

from tests.discord_rig import CaptureSink
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.endpoint import DiscordEndpoint
from voicetrack_recorder.discord.source import REC_SUFFIX, DiscordSource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.parametrize("steps", [1, 3, 6, 12])
async def test_cancel_after_stop_still_restores_the_nickname_and_leaves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        yarl.URL(str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)))
    server = LocalDiscord(tmp_path / "discord", Settings(users=["alice"]))
    info = await server.start()
    world = server.world
    try:
        source = DiscordSource(
            token=info["bot_token"], guild_id=info["guild_id"],
            channel_id=info["voice_channel_id"], clock=SessionClock(int(time.time() * 1000)),
            sink=CaptureSink(), endpoint=DiscordEndpoint(info["api_base"], info["gateway_url"],
                                                         info["ca_bundle"]))
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(stop))
        deadline = time.monotonic() + 30
        while not ((world.bot.nick or "").endswith(REC_SUFFIX.strip())
                   and world.bot.id in world.voice_states):
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "the source never joined with [REC]"
            await asyncio.sleep(0.05)
        stop.set()
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()  # as Recorder.run does once its uploads are done
        await asyncio.gather(task, return_exceptions=True)
        assert world.bot.nick is None
        deadline = time.monotonic() + 5  # the VOICE_STATE_UPDATE with no channel is sent
        while world.bot.id in world.voice_states and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert world.bot.id not in world.voice_states
    finally:
        await server.stop()
