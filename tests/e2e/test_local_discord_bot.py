"""The recorder image's unmodified bot (`voicetrack-recorder bot`) on the wire: it logs in
to the local Discord over TLS (found through VOICETRACK_DISCORD_API_BASE, _GATEWAY_URL and
_CA_BUNDLE), syncs `/record` at start (a guild bulk overwrite), and a
member's typed `/record start|pause|status|stop` arrive as INTERACTION_CREATE; each is
answered through the interaction endpoints (an ephemeral deferral, then a follow-up with
the embed), checked on the local Discord's side, and the RecordingSession changes on the
local control plane. No operator runs: the session is only created, patched and deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import discord
import pytest

from tests.local_discord_clients import point_discord_py, start_client, stop_client
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_local.stack import install_crds

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture
async def local_discord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                        ) -> AsyncIterator[tuple[LocalDiscord, dict[str, Any]]]:
    server = LocalDiscord(tmp_path / "discord", Settings(users=["alice"]))
    info = await server.start()
    point_discord_py(monkeypatch, info)
    yield server, info
    await server.stop()


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)
    return value


async def test_bot_commands_over_the_wire(local_discord: Any, cluster: Any, kubectl: Any,
                                          namespace: str) -> None:
    server, info = local_discord
    world = server.world
    install_crds(cluster.kubeconfig)
    alice_id = int(info["users"][0]["id"])  # the guild owner: Manage Server
    alice, alice_runner = await start_client(info["users"][0]["token"], info["ca_bundle"])
    env = {**{k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"},
           "VOICETRACK_DISCORD_API_BASE": info["api_base"],
           "VOICETRACK_DISCORD_GATEWAY_URL": info["gateway_url"],
           "VOICETRACK_DISCORD_CA_BUNDLE": info["ca_bundle"],
           "VOICETRACK_DISCORD_TOKEN": info["bot_token"], "VOICETRACK_NAMESPACE": namespace,
           "KUBECONFIG": str(cluster.kubeconfig),
           "VOICETRACK_BOT_SYNC_GUILDS": info["guild_id"],
           "VOICETRACK_BOT_SPEC_DEFAULTS": json.dumps({"storage": {"bucket": "rec"}})}
    bot = await asyncio.create_subprocess_exec(  # the console script, as the image runs it
        str(Path(sys.executable).parent / "voicetrack-recorder"), "bot", env=env, cwd=REPO)
    try:
        channel = alice.get_channel(int(info["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        await channel.connect(timeout=20)  # `/record start` records the member's channel
        synced = await _until(lambda: world.commands.get(info["guild_id"]), "command sync")
        assert server.gateway is not None
        gateway = server.gateway
        await _until(lambda: any(s.user is world.bot and s.ws is not None
                                 for s in gateway.sessions.values()), "the bot's gateway")
        assert [c["name"] for c in synced] == ["record"]
        assert {o["name"] for o in synced[0]["options"]} == {
            "start", "stop", "pause", "resume", "status"}

        async def command(sub: str) -> dict[str, Any]:
            sent = await server.interact(alice_id, "record", sub)
            reply = await _until(lambda: [m for m in world.messages
                                          if m.get("interaction_token") == sent["token"]
                                          and m["embeds"]],
                                 f"/record {sub} follow-up")
            deferral = [r for r in world.interaction_responses if r["token"] == sent["token"]]
            assert deferral[0]["type"] == 5 and deferral[0]["data"]["flags"] & 64  # ephemeral
            assert reply[0]["flags"] & 64 and reply[0]["embeds"]
            return reply[0]

        started = await command("start")
        assert "error" not in json.dumps(started["embeds"]).lower()
        name = f"g-{info['guild_id']}"
        spec = json.loads(kubectl("-n", namespace, "get", "recsess", name,
                                  "-o", "json").stdout)["spec"]
        assert spec["channelId"] == info["voice_channel_id"]
        assert spec["requestedBy"] == str(alice_id)
        await command("pause")
        assert kubectl("-n", namespace, "get", "recsess", name,
                       "-o", "jsonpath={.spec.paused}").stdout == "true"
        await command("status")
        await command("stop")
        gone = kubectl("-n", namespace, "get", "recsess", name, check=False)
        assert gone.returncode != 0 or "deletionTimestamp" in kubectl(
            "-n", namespace, "get", "recsess", name, "-o", "json").stdout
    finally:
        bot.terminate()
        await asyncio.wait_for(bot.wait(), 30)
        await stop_client(alice, alice_runner)
