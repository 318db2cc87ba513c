"""The recorder image's unmodified bot (`voicetrack-recorder bot`) on the wire: it logs in
to the local Discord over TLS (found through VOICETRACK_DISCORD_API_BASE, _GATEWAY_URL and
_CA_BUNDLE), syncs `/record` at start (a guild bulk overwrite), and a
member's typed `/record start|pause|status|stop` arrive as INTERACTION_CREATE; each is
answered through the interaction endpoints (an ephemeral deferral, then a follow-up with
the embed), checked on the local Discord's side, and the RecordingSession changes on the
local control plane. In the first test no operator runs: the session is only created,
patched and deleted. With the whole stack (operator, SeaweedFS, PostgreSQL) `/record stop`
follows the promotion and ends with presigned links whose downloads match the manifest's
and the `recordings` rows' sha256, `/record list` and `/record get` read the guild's saved
meetings, and refusals (no Connect, another guild's meeting, a guild not allowed) are
checked as members see them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import discord
import pytest

from tests.e2e.test_bot_sessions import tone_wav
from tests.fixtures.stack import Stack
from tests.local_discord_clients import point_discord_py, start_client, stop_client
from voicetrack.layout import MeetingLayout
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_local.discord.world import CONNECT, Overwrite, VoiceState
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
            "start", "stop", "pause", "resume", "status", "list", "get", "optout", "optin"}

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


def bot_env(info: dict[str, Any], kubeconfig: Path, namespace: str, **extra: str
            ) -> dict[str, str]:
    """The bot's environment against the local Discord and cluster, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"},
            "VOICETRACK_DISCORD_API_BASE": info["api_base"],
            "VOICETRACK_DISCORD_GATEWAY_URL": info["gateway_url"],
            "VOICETRACK_DISCORD_CA_BUNDLE": info["ca_bundle"],
            "VOICETRACK_DISCORD_TOKEN": info["bot_token"], "VOICETRACK_NAMESPACE": namespace,
            "KUBECONFIG": str(kubeconfig), "VOICETRACK_BOT_SYNC_GUILDS": info["guild_id"],
            **extra}


async def start_bot(server: LocalDiscord, info: dict[str, Any], env: dict[str, str]
                    ) -> asyncio.subprocess.Process:
    """`voicetrack-recorder bot` as the image runs it; returns once `/record` is synced
    and the bot's gateway session is up."""
    bot = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "voicetrack-recorder"), "bot", env=env, cwd=REPO)
    world = server.world
    await _until(lambda: world.commands.get(info["guild_id"]), "command sync")
    assert server.gateway is not None
    gateway = server.gateway
    await _until(lambda: any(s.user is world.bot and s.ws is not None
                             for s in gateway.sessions.values()), "the bot's gateway")
    return bot


async def stop_bot(bot: asyncio.subprocess.Process) -> None:
    bot.terminate()
    await asyncio.wait_for(bot.wait(), 30)


async def typed(server: LocalDiscord, user_id: int, sub: str,
                options: dict[str, str | int | bool] | None = None,
                done: Callable[[dict[str, Any]], bool] = lambda m: True,
                timeout: float = 60) -> dict[str, Any]:
    """Member `user_id` types `/record <sub>`; returns the bot's ephemeral reply (the
    message its interaction token filled) once `done(message)` holds."""
    world = server.world
    sent = await server.interact(user_id, "record", sub, options)
    reply = await _until(lambda: [m for m in world.messages
                                  if m.get("interaction_token") == sent["token"]
                                  and m["embeds"] and done(m)],
                         f"/record {sub} reply", timeout)
    assert reply[0]["flags"] & 64, reply[0]  # ephemeral: only the member sees it
    return cast(dict[str, Any], reply[0])


def embed_text(message: dict[str, Any]) -> str:
    return json.dumps(message["embeds"])


LINK = re.compile(r"\[Download (\w+)\]\((\S+?)\)")


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return cast(bytes, resp.read())


async def test_stop_answers_with_links_and_list_get_and_refusals(
        stack: Stack, e2e_namespace: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ns = e2e_namespace
    server = LocalDiscord(tmp_path / "discord", Settings(users=["alice", "bob"]))
    world = server.world
    alice, bob = world.users
    # Bob may not connect to the voice channel (a member overwrite); both sit in it, as
    # the guild's voice states say when the bot connects.
    world.voice.overwrites.append(Overwrite(bob.id, 1, deny=CONNECT))
    for user in (alice, bob):
        world.voice_states[user.id] = VoiceState(user.id, world.voice.id, f"s-{user.id}")
    info = await server.start()
    point_discord_py(monkeypatch, info)
    key = f"e2e-input/{ns}/{alice.id}.wav"
    stack.store.put_bytes(key, tone_wav(6_000), "audio/wav")
    defaults = {"chunkSeconds": 5, "storage": {"bucket": stack.s3.bucket},
                "source": {"type": "files", "speakers": [
                    {"userId": str(alice.id), "objectKey": key}]}}
    env = bot_env(info, stack.kubeconfig, ns, **stack.s3.env(),
                  VOICETRACK_BOT_EVERYONE="true",
                  VOICETRACK_BOT_SPEC_DEFAULTS=json.dumps(defaults))
    bot = await start_bot(server, info, env)
    name = f"g-{info['guild_id']}"
    try:
        # Bob lacks Connect on the channel he is in: refused, nothing created.
        refused = await typed(server, bob.id, "start")
        assert "you need Connect on" in embed_text(refused), embed_text(refused)
        assert stack.kubectl("-n", ns, "get", "recsess", name, check=False).returncode != 0

        # Alice records; once a chunk is in, she stops, and the reply follows the
        # promotion until it holds links.
        await typed(server, alice.id, "start")
        await _until(lambda: json.loads(stack.kubectl(
            "-n", ns, "get", "recsess", name, "-o", "json").stdout).get("status", {}).get(
            "chunks", {}).get("total", 0) >= 1, "a chunk", 120)
        meeting = stack.kubectl("-n", ns, "get", "recsess", name, "-o",
                                "jsonpath={.status.meetingId}").stdout
        stop_sent = len(world.log)
        stopped = await typed(server, alice.id, "stop",
                              done=lambda m: m["embeds"][0].get("title") == "Recording saved",
                              timeout=240)
        assert stack.kubectl("-n", ns, "get", "recsess", name, check=False).returncode != 0
        edits = [p for m, p in world.log[stop_sent:] if m == "PATCH" and "/webhooks/" in p]
        assert edits, "the reply was never edited (no progress, no final edit)"
        fields = {f["name"]: f["value"] for f in stopped["embeds"][0]["fields"]}
        assert set(fields) == {"alice (mp3)", "Mix (mp3)"}, fields
        assert f"`{meeting}`" in stopped["embeds"][0]["description"]
        layout = MeetingLayout("recordings", info["guild_id"], meeting)
        manifest = stack.store.get_json(layout.final_manifest_key)
        by_key = {t["key"]: t["sha256"] for t in manifest["tracks"]}
        rows = await asyncio.to_thread(
            stack.db, lambda s, m=meeting: s.get_recordings_for_meeting(m))
        row_sha = {r.object_key: r.sha256 for r in rows}
        for value in fields.values():
            found = LINK.search(value)
            assert found is not None, value
            fmt, url = found.groups()
            assert fmt == "mp3" and "X-Amz-Expires=900" in url
            data = await asyncio.to_thread(download, url)
            digest = hashlib.sha256(data).hexdigest()
            track_key = next(k for k in by_key if k.split("/")[-1] in url.split("?")[0])
            assert digest == by_key[track_key] == row_sha[track_key]

        # list: this meeting, with its speaker's display name, saved; for alice (the owner,
        # who spoke), not for bob (neither manages the server nor spoke: issue 14's rule)
        listed = await typed(server, alice.id, "list")
        line = next(ln for ln in listed["embeds"][0]["description"].splitlines()
                    if meeting in ln)
        assert "alice" in line and "Saved" in line, line
        assert meeting not in embed_text(await typed(server, bob.id, "list"))
        hidden = await typed(server, bob.id, "get", {"meeting": meeting})
        assert hidden["embeds"][0]["title"] == "No recording"

        # get: links minted now.
        again = await typed(server, alice.id, "get", {"meeting": meeting})
        got = {f["name"]: f["value"] for f in again["embeds"][0]["fields"]}
        assert set(got) == set(fields)
        for value in got.values():
            found = LINK.search(value)
            assert found is not None
            assert hashlib.sha256(await asyncio.to_thread(download, found.group(2))
                                  ).hexdigest() in by_key.values()

        # another guild's saved meeting answers exactly like one that does not exist.
        other_guild, other_meeting = "300000000000000077", "0123456789abcdef"
        stack.store.put_json(MeetingLayout("recordings", other_guild, other_meeting
                                           ).final_manifest_key, manifest)
        foreign = await typed(server, alice.id, "get", {"meeting": other_meeting})
        absent = await typed(server, alice.id, "get", {"meeting": "fedcba9876543210"})
        assert foreign["embeds"][0]["title"] == absent["embeds"][0]["title"] == \
            "No recording"
        assert embed_text(foreign) == embed_text(absent).replace("fedcba9876543210",
                                                                 other_meeting)
        assert other_guild not in embed_text(foreign) and "Download" not in embed_text(
            foreign)
    finally:
        await stop_bot(bot)
        await server.stop()


async def test_a_guild_outside_the_allow_list_is_refused(local_discord: Any, cluster: Any,
                                                         namespace: str) -> None:
    server, info = local_discord
    install_crds(cluster.kubeconfig)
    bot = await start_bot(server, info, bot_env(
        info, cluster.kubeconfig, namespace, VOICETRACK_BOT_GUILDS="300000000000000077"))
    try:
        for sub in ("start", "status", "list"):
            reply = await typed(server, int(info["users"][0]["id"]), sub)
            assert "not enabled for this server" in embed_text(reply), embed_text(reply)
        assert "No resources" in cluster_sessions(cluster, namespace)
    finally:
        await stop_bot(bot)


def cluster_sessions(cluster: Any, namespace: str) -> str:
    from voicetrack_local.kubectl import kubectl
    res = kubectl(cluster.kubeconfig, "-n", namespace, "get", "recsess")
    return str(res.stdout) + str(res.stderr)


async def test_a_promotion_outlasting_the_reply_is_announced_in_the_channel(
        stack: Stack, e2e_namespace: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # VOICETRACK_BOT_FOLLOW_SECONDS=0 stands for a promotion longer than the 15 minute
    # interaction token: the reply says "still saving", then a plain channel message
    # (visible to everyone there, so without links) points to /record get.
    ns = e2e_namespace
    server = LocalDiscord(tmp_path / "discord", Settings(users=["alice"]))
    world = server.world
    alice = world.users[0]
    world.voice_states[alice.id] = VoiceState(alice.id, world.voice.id, f"s-{alice.id}")
    info = await server.start()
    point_discord_py(monkeypatch, info)
    key = f"e2e-input/{ns}/{alice.id}.wav"
    stack.store.put_bytes(key, tone_wav(6_000), "audio/wav")
    defaults = {"chunkSeconds": 5, "storage": {"bucket": stack.s3.bucket},
                "source": {"type": "files", "speakers": [
                    {"userId": str(alice.id), "objectKey": key}]}}
    env = bot_env(info, stack.kubeconfig, ns, **stack.s3.env(),
                  VOICETRACK_BOT_FOLLOW_SECONDS="0",
                  VOICETRACK_BOT_SPEC_DEFAULTS=json.dumps(defaults))
    bot = await start_bot(server, info, env)
    name = f"g-{info['guild_id']}"
    try:
        await typed(server, alice.id, "start")
        await _until(lambda: json.loads(stack.kubectl(
            "-n", ns, "get", "recsess", name, "-o", "json").stdout).get("status", {}).get(
            "chunks", {}).get("total", 0) >= 1, "a chunk", 120)
        meeting = stack.kubectl("-n", ns, "get", "recsess", name, "-o",
                                "jsonpath={.status.meetingId}").stdout
        reply = await typed(server, alice.id, "stop", done=lambda m: m["embeds"][0].get(
            "title", "").startswith("Still saving"))
        assert f"/record get {meeting}" in reply["embeds"][0]["title"]
        notice = await _until(lambda: [m for m in world.messages
                                       if m["author"]["id"] == str(world.bot.id)
                                       and "interaction_token" not in m
                                       and meeting in m["content"]], "the notice", 240)
        assert notice[0]["channel_id"] == info["text_channel_id"]
        assert notice[0]["content"] == (f"The recording `{meeting}` is saved: `/record get "
                                        f"{meeting}` for download links (only you will see "
                                        "them).")
        assert not notice[0]["embeds"] and "http" not in notice[0]["content"]
    finally:
        await stop_bot(bot)
        await server.stop()
