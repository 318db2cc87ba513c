"""`/record optout` and `/record optin` on the wire (issue 12): the unmodified bot
(`voicetrack-recorder bot`, a subprocess) logged in to the local Discord, members' typed
commands arriving as INTERACTION_CREATE, answered through the interaction endpoints
(ephemeral), and the RecordingSession and the guild's consent ConfigMap checked on the
local control plane (CRDs only, no operator).

A member opts out only themself; the opt-out is patched into the live session's
`spec.optOutUserIds` without losing a concurrent change (another member's opt-out and a
`/record pause` typed at the same moment land too), lasts into the next `/record start`,
and `optin` undoes both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from tests.e2e.test_local_discord_bot import bot_env, embed_text, start_bot, stop_bot, typed
from tests.local_discord_clients import point_discord_py, start_client, stop_client
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_local.stack import install_crds

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
async def local_discord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                        ) -> AsyncIterator[tuple[LocalDiscord, dict[str, Any]]]:
    server = LocalDiscord(tmp_path / "discord", Settings(users=["alice", "bob"]))
    info = await server.start()
    point_discord_py(monkeypatch, info)
    yield server, info
    await server.stop()


async def test_optout_and_optin_patch_the_live_session_and_last(
        local_discord: Any, cluster: Any, kubectl: Any, namespace: str) -> None:
    server, info = local_discord
    install_crds(cluster.kubeconfig)
    alice, bob = (int(u["id"]) for u in info["users"])  # alice owns the guild
    name, configmap = f"g-{info['guild_id']}", f"voicetrack-consent-{info['guild_id']}"

    def spec() -> dict[str, Any]:
        return dict(json.loads(kubectl("-n", namespace, "get", "recsess", name,
                                       "-o", "json").stdout)["spec"])

    def remembered() -> list[str]:
        data = json.loads(kubectl("-n", namespace, "get", "configmap", configmap,
                                  "-o", "json").stdout)["data"]
        return list(json.loads(data["optOutUserIds"]))

    client, runner = await start_client(info["users"][0]["token"], info["ca_bundle"])
    env = bot_env(info, cluster.kubeconfig, namespace,
                  VOICETRACK_BOT_SPEC_DEFAULTS=json.dumps({"storage": {"bucket": "rec"}}))
    bot = await start_bot(server, info, env)
    try:
        channel = client.get_channel(int(info["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        await channel.connect(timeout=20)
        await typed(server, alice, "start")
        assert "optOutUserIds" not in spec()

        # two opt-outs and a pause at the same moment: no change is lost (each patch is
        # preconditioned on the resourceVersion it read; a 409 reads again)
        out, _, _ = await asyncio.gather(typed(server, bob, "optout"),
                                         typed(server, alice, "optout"),
                                         typed(server, alice, "pause"))
        assert "You are not recorded" in embed_text(out) and "from now on" in embed_text(out)
        now = spec()
        assert now["optOutUserIds"] == sorted([str(alice), str(bob)]) and now["paused"] is True
        assert remembered() == sorted([str(alice), str(bob)])
        await typed(server, alice, "optin")  # each member acts only on themself
        assert spec()["optOutUserIds"] == [str(bob)] and remembered() == [str(bob)]
        again = await typed(server, bob, "optout")  # idempotent
        assert "You are not recorded" in embed_text(again)
        assert spec()["optOutUserIds"] == [str(bob)]

        back = await typed(server, bob, "optin")
        assert "You are recorded again" in embed_text(back)
        assert spec().get("optOutUserIds", []) == [] and remembered() == []

        await typed(server, bob, "optout")
        await typed(server, alice, "stop")
        await asyncio.to_thread(kubectl, "-n", namespace, "wait", "--for=delete",
                                f"recsess/{name}", "--timeout=30s", check=False)
        await typed(server, alice, "start")  # a later session: bob stays opted out
        assert spec()["optOutUserIds"] == [str(bob)]
        assert spec()["requestedBy"] == str(alice)
    finally:
        await stop_bot(bot)
        await stop_client(client, runner)
