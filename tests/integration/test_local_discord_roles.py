"""Members' roles through the local Discord into the recorder's consent (issue 12): a
discord.py client with the recorder's intents (GUILD_MEMBERS, no chunking at start) gets
the roles of each member in voice from GUILD_CREATE (only those: no GUILD_PRESENCES), and
a role given or taken mid-call arrives as GUILD_MEMBER_UPDATE; `member_roles` reads them
from discord.py's member cache, and a `Consent` with an opt-out role opts the member out
and back in as the role comes and goes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import aiohttp
import discord
import pytest

from tests.integration import test_local_discord as base
from voicetrack_local.discord.world import VoiceState
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.discord.members import member_roles

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

local_discord = base.local_discord


_until = base._until


async def test_roles_follow_guild_member_updates_into_consent(local_discord: Any) -> None:
    server, info = local_discord
    world = server.world
    role = world.add_role("not-recorded")
    other = world.add_role("moderators")  # before the client connects: in its GUILD_CREATE
    bob, carol = world.users[1], world.users[2]
    bob.roles = [other]
    # in the voice channel when the client connects: without GUILD_PRESENCES, GUILD_CREATE
    # lists only the bot and the members in voice ("Gateway Events › Guild Create")
    for user in (bob, carol):
        world.voice_states[user.id] = VoiceState(user.id, world.voice.id, f"vs-{user.id}")
    intents = discord.Intents.none()
    intents.guilds = intents.voice_states = intents.members = True  # DiscordSource's
    ctx = ssl.create_default_context(cafile=info["ca_bundle"])
    client = discord.Client(intents=intents, connector=aiohttp.TCPConnector(ssl=ctx),
                            chunk_guilds_at_startup=False)
    await client.login(info["bot_token"])
    runner = asyncio.create_task(client.connect(reconnect=False))
    try:
        await asyncio.wait_for(client.wait_until_ready(), 15)
        roles_of = member_roles(client, int(info["guild_id"]))
        assert set(roles_of(str(bob.id)) or []) == {str(other), info["guild_id"]}
        assert roles_of("100000000000000001") is None  # not a cached member
        assert roles_of(str(world.users[0].id)) is None  # not in voice: not in GUILD_CREATE
        consent = Consent(SessionClock(int(time.time() * 1000)), role_ids=[str(role)],
                          roles_of=roles_of)
        assert not consent.see(str(carol.id))

        await server.set_roles(carol.id, [role])  # a moderator gives carol the role
        await _until(lambda: str(role) in (roles_of(str(carol.id)) or []),
                     "GUILD_MEMBER_UPDATE in discord.py's cache")
        assert consent.refresh() == [str(carol.id)]
        assert [(o.user_id, o.via) for o in consent.opted_out()] == [(str(carol.id), "role")]

        await server.set_roles(carol.id, [])
        await _until(lambda: str(role) not in (roles_of(str(carol.id)) or []),
                     "the role taken away")
        assert consent.refresh() == [] and not consent.excluded(str(carol.id))
    finally:
        await client.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
