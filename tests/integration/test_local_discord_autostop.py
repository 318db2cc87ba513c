"""Auto-stop: the recorder's `DiscordSource` (a subprocess) ends by itself, with reason
`channel-empty`, once nobody but the bot has been in the voice channel for
`limits.emptyChannelSeconds` — and not while a member is there, silent or not."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import discord
import pytest

from tests.discord_rig import tone_pcm
from tests.integration import test_local_discord as base
from tests.local_discord_clients import dave_ready, play, start_client, stop_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

local_discord = base.local_discord
EMPTY_S = 3.0


async def test_the_source_stops_once_the_channel_is_empty(local_discord: Any) -> None:
    server, info = local_discord
    alice_info = info["users"][0]
    bot_id = int(info["application_id"])
    alice, alice_runner = await start_client(alice_info["token"], info["ca_bundle"])
    child = None
    try:
        channel = alice.get_channel(int(info["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        alice_voice: discord.VoiceClient = await channel.connect(timeout=20)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.local_discord_recorder",
            str(server.state_dir / "discord.json"), "-", str(EMPTY_S), cwd=base.REPO,
            stdout=asyncio.subprocess.PIPE)
        await base._until(lambda: server.voice is not None
                          and bot_id in server.voice.connections
                          and server.voice.connections[bot_id].mode is not None,
                          "the recorder in the voice channel")
        await dave_ready(alice_voice, epoch=1)  # the call's group forms when the bot joins
        await base._until(lambda: server.voice is not None
                          and server.voice.calls[channel.id].transition is None, "op 22")
        await asyncio.sleep(EMPTY_S + 1)  # a silent member keeps the recording going
        assert child.returncode is None
        sent = await play(alice_voice, tone_pcm(100, 440.0))
        await asyncio.sleep(0.5)
        await alice_voice.disconnect(force=True)
        loop = asyncio.get_running_loop()
        left = loop.time()
        out, _ = await asyncio.wait_for(child.communicate(), 30)
        took = loop.time() - left
    finally:
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()
        await stop_client(alice, alice_runner)
    result = json.loads(out.decode().strip().splitlines()[-1])
    print(f"ended {took:.1f} s after the last member left: {result['end_reason']}, "
          f"frames {result['frames']} of {sent}")
    assert child.returncode == 0 and result["end_reason"] == "channel-empty"
    assert EMPTY_S <= took < EMPTY_S + 10
    assert result["frames"][alice_info["id"]] == sent
