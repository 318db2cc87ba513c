"""Unmodified discord.py 2.7.1 clients against the local Discord, end to end.

Real TLS, real sockets, real davey (DAVE 1) and libopus. The bot joins the voice channel
with the recorder's `RecorderVoiceClient` and its receive pipeline attached exactly as
`DiscordSource._join` attaches it (`make_receiver` + `attach`), so what the recorder gets
is what discord.py's socket delivered; members join as senders and play known tones
through discord.py's own send path. The relay removes each sender's transport encryption
and applies the bot's; the DAVE frames pass through untouched, so the tones decode only if
the bot's DAVE session (driven by discord.py from the local Discord's ops 21-31) opens them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import discord
import pytest

from tests.discord_rig import CaptureSink, tone_pcm
from tests.local_discord_clients import (
    dave_ready,
    dominant_hz,
    play,
    point_discord_py,
    start_client,
    stop_client,
)
from voicetrack_local.discord.relay import Faults
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_local.discord.world import CONNECT, Overwrite
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.voiceclient import (
    ConnectionReceiver,
    RecorderVoiceClient,
    make_receiver,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture
async def local_discord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                        ) -> AsyncIterator[tuple[LocalDiscord, dict[str, Any]]]:
    server = LocalDiscord(tmp_path / "discord", Settings())
    info = await server.start()
    point_discord_py(monkeypatch, info)
    yield server, info
    await server.stop()


class Recorder:
    """The bot as the recorder runs it: a `RecorderVoiceClient` with the receive pipeline
    attached, ticked every 20 ms into a `CaptureSink`."""

    def __init__(self) -> None:
        self.sink = CaptureSink()
        self.conn: ConnectionReceiver = make_receiver(
            SessionClock(int(time.time() * 1000)), self.sink, asyncio.get_running_loop())
        self._ticker: asyncio.Task[None] | None = None
        self.voice: discord.VoiceClient | None = None

    async def join(self, channel: discord.VoiceChannel) -> discord.VoiceClient:
        self.voice = await channel.connect(
            cls=functools.partial(RecorderVoiceClient, receiver=self.conn),
            self_mute=True, timeout=20)
        self.conn.attach(self.voice._connection)
        self._ticker = asyncio.create_task(self._tick())
        return self.voice

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.conn.receiver.tick()

    async def finish(self) -> None:
        await asyncio.sleep(0.6)  # jitter buffer and seal delay
        if self._ticker is not None:
            self._ticker.cancel()
        self.conn.detach()
        self.conn.receiver.flush()


async def test_bot_records_a_member_through_the_local_discord(local_discord: Any) -> None:
    server, info = local_discord
    bot, bot_runner = await start_client(info["bot_token"], info["ca_bundle"])
    alice_info = info["users"][0]
    alice, alice_runner = await start_client(alice_info["token"], info["ca_bundle"])
    try:
        # READY + GUILD_CREATE: the guild, its channels and members are in discord.py's cache.
        guild = bot.get_guild(int(info["guild_id"]))
        assert guild is not None and bot.user is not None
        assert bot.user.id == int(info["application_id"])
        channel = guild.get_channel(int(info["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        assert channel.permissions_for(guild.me).connect

        recorder = Recorder()
        bot_voice = await recorder.join(channel)
        assert bot_voice.is_connected()
        assert bot_voice._connection.dave_protocol_version == 1
        assert bot_voice.mode in ("aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize")

        alice_channel = alice.get_channel(int(info["voice_channel_id"]))
        assert isinstance(alice_channel, discord.VoiceChannel)
        alice_voice: discord.VoiceClient = await alice_channel.connect(timeout=20)
        await dave_ready(bot_voice, alice_voice, epoch=1)
        assert server.voice is not None and server.voice.calls[channel.id].commits == 1
        # the bot sees alice's voice state (VOICE_STATE_UPDATE)
        assert int(alice_info["id"]) in {m.id for m in channel.members}

        sent = await play(alice_voice, tone_pcm(150, 440.0))  # 3 s at 440 Hz
        await recorder.finish()
    finally:
        await stop_client(alice, alice_runner)
        await stop_client(bot, bot_runner)

    stats = recorder.conn.receiver.stats
    frames = recorder.sink.frames[alice_info["id"]]
    assert server.relay is not None
    relay = server.relay.stats
    print(f"frames sent {sent}, relayed {relay.forwarded}, recorded {len(frames)}; "
          f"DAVE {stats.decrypt[alice_info['id']]}")
    assert sent == 155  # 150 frames of audio, then discord.py's 5 silence frames
    assert relay.received == relay.forwarded == sent and relay.undecryptable == 0
    decrypt = stats.decrypt[alice_info["id"]]
    assert decrypt.decrypted == 150 and decrypt.silence == 5 and not decrypt.failures
    assert decrypt.plain == 0  # every audio frame was DAVE-encrypted on the wire
    assert len(frames) == sent and stats.lost == 0
    assert abs(dominant_hz(frames) - 440.0) < 5


async def test_members_join_and_leave_across_mls_epochs(local_discord: Any) -> None:
    """Two senders at once, one leaves (an external Remove), a third joins (an Add): every
    change is one commit the local Discord announces; every frame still opens."""
    server, info = local_discord
    alice_info, bob_info, carol_info = info["users"]
    channel_id = int(info["voice_channel_id"])
    clients = [await start_client(t, info["ca_bundle"]) for t in (
        info["bot_token"], alice_info["token"], bob_info["token"], carol_info["token"])]
    (bot, _), (alice, _), (bob, _), (carol, _) = clients
    try:
        recorder = Recorder()
        bot_channel = bot.get_channel(channel_id)
        assert isinstance(bot_channel, discord.VoiceChannel)
        bot_voice = await recorder.join(bot_channel)
        voices: dict[str, discord.VoiceClient] = {}
        for name, client in (("alice", alice), ("bob", bob)):
            member_channel = client.get_channel(channel_id)
            assert isinstance(member_channel, discord.VoiceChannel)
            voices[name] = await member_channel.connect(timeout=20)
        await dave_ready(bot_voice, voices["alice"], voices["bob"], epoch=2)
        sent_1 = await asyncio.gather(play(voices["alice"], tone_pcm(100, 440.0)),
                                      play(voices["bob"], tone_pcm(100, 660.0)))

        await asyncio.sleep(0.5)  # bob stops talking, then leaves
        await voices["bob"].disconnect()
        await dave_ready(bot_voice, voices["alice"], epoch=3)
        carol_channel = carol.get_channel(channel_id)
        assert isinstance(carol_channel, discord.VoiceChannel)
        voices["carol"] = await carol_channel.connect(timeout=20)
        await dave_ready(bot_voice, voices["alice"], voices["carol"], epoch=4)
        sent_2 = await asyncio.gather(play(voices["alice"], tone_pcm(100, 440.0)),
                                      play(voices["carol"], tone_pcm(100, 880.0)))
        await recorder.finish()
        assert server.voice is not None
        commits = server.voice.calls[channel_id].commits
    finally:
        for client, runner in clients:
            await stop_client(client, runner)

    assert commits == 4  # alice joins (the bot creates the group), bob joins, leaves, carol
    frames = recorder.sink.frames
    stats = recorder.conn.receiver.stats
    sent = {"alice": sent_1[0] + sent_2[0], "bob": sent_1[1], "carol": sent_2[1]}
    got = {name: len(frames[u["id"]]) for name, u in
           (("alice", alice_info), ("bob", bob_info), ("carol", carol_info))}
    print(f"frames sent {sent}, recorded {got}; lost {stats.lost}, dropped {stats.dropped}, "
          f"relay {server.relay.stats if server.relay else None}")
    assert got == sent
    for user in (alice_info, bob_info, carol_info):
        assert not stats.decrypt[user["id"]].failures
        assert stats.decrypt[user["id"]].plain == 0
    assert abs(dominant_hz(frames[alice_info["id"]]) - 440.0) < 5
    assert abs(dominant_hz(frames[bob_info["id"]]) - 660.0) < 5
    assert abs(dominant_hz(frames[carol_info["id"]]) - 880.0) < 5


@contextlib.asynccontextmanager
async def bot_and_alice_in_voice(info: dict[str, Any]
                                 ) -> AsyncIterator[tuple[discord.Client, Recorder,
                                                          discord.VoiceClient,
                                                          discord.VoiceClient]]:
    """The bot recording the voice channel and the first member in it, DAVE at epoch 1:
    yields (bot client, recorder, bot's voice client, member's voice client); both clients
    log out afterwards."""
    bot, bot_runner = await start_client(info["bot_token"], info["ca_bundle"])
    alice, alice_runner = await start_client(info["users"][0]["token"], info["ca_bundle"])
    try:
        channel = bot.get_channel(int(info["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        recorder = Recorder()
        bot_voice = await recorder.join(channel)
        alice_channel = alice.get_channel(channel.id)
        assert isinstance(alice_channel, discord.VoiceChannel)
        alice_voice: discord.VoiceClient = await alice_channel.connect(timeout=20)
        await dave_ready(bot_voice, alice_voice, epoch=1)
        yield bot, recorder, bot_voice, alice_voice
    finally:
        await stop_client(alice, alice_runner)
        await stop_client(bot, bot_runner)


async def test_relay_faults_are_concealed(local_discord: Any) -> None:
    """5 % loss, 5 % reordered, 5 % duplicated on the way to the bot: the recorder's jitter
    buffer reorders and de-duplicates, FEC/PLC rebuilds the lost frames, the tone stays."""
    server, info = local_discord
    assert server.relay is not None
    server.relay.set_faults(Faults(loss_pct=5, reorder_pct=5, duplicate_pct=5, seed=7))
    alice_info = info["users"][0]
    async with bot_and_alice_in_voice(info) as (_bot, recorder, _bot_voice, alice_voice):
        sent = await play(alice_voice, tone_pcm(250, 440.0))  # 5 s
        await recorder.finish()
    relay, stats = server.relay.stats, recorder.conn.receiver.stats
    frames = recorder.sink.frames[alice_info["id"]]
    print(f"frames sent {sent}, relay dropped {relay.dropped} reordered {relay.reordered} "
          f"duplicated {relay.duplicated}; recorded {len(frames)} (recovered "
          f"{stats.recovered}, lost {stats.lost}, dropped {dict(stats.dropped)})")
    assert relay.dropped > 0 and relay.reordered > 0 and relay.duplicated > 0
    assert stats.recovered > 0 and stats.dropped["duplicate"] > 0
    assert not stats.decrypt[alice_info["id"]].failures
    assert len(frames) >= sent - 2  # every slot filled but a loss run longer than FEC/PLC's
    assert abs(dominant_hz(frames) - 440.0) < 5


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def test_unmodified_discord_source_records_with_notice(local_discord: Any) -> None:
    """The recorder's own `DiscordSource` (in a subprocess, reaching the local Discord
    through its `endpoint` setting, without SSL_CERT_FILE): it joins, sets the `[REC]`
    nickname and posts the notice, records a member's tone, and restores the nickname on
    SIGTERM — all checked on the local Discord's side."""
    server, info = local_discord
    world = server.world
    bot_id = int(info["application_id"])
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.local_discord_recorder",
        str(server.state_dir / "discord.json"), env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE)
    alice_info = info["users"][0]
    alice, alice_runner = await start_client(alice_info["token"], info["ca_bundle"])
    try:
        await _until(lambda: (world.bot.nick or "").endswith("[REC]")
                     and any(m["author"]["id"] == str(bot_id) for m in world.messages),
                     "the recorder's notice")
        assert server.voice is not None
        assert server.voice.connections[bot_id].mode is not None
        channel = alice.get_channel(int(info["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        alice_voice: discord.VoiceClient = await channel.connect(timeout=20)
        await dave_ready(alice_voice, epoch=1)
        await _until(lambda: server.voice is not None
                     and server.voice.calls[channel.id].transition is None, "op 22")
        sent = await play(alice_voice, tone_pcm(150, 440.0))
        await asyncio.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(child.communicate(), 30)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await stop_client(alice, alice_runner)
    assert child.returncode == 0
    result = json.loads(out.decode().strip().splitlines()[-1])
    print(f"frames sent {sent}, recorded {result['frames']}; "
          f"DAVE {result['stats']['decrypt']}")
    assert result["frames"][alice_info["id"]] == sent
    assert result["stats"]["decrypt"][alice_info["id"]]["failures"] == {}
    assert abs(result["hz"][alice_info["id"]] - 440.0) < 5
    assert world.bot.nick is None  # restored
    nick_patches = [p for m, p in world.log
                    if m == "PATCH" and p.endswith(f"/guilds/{info['guild_id']}/members/@me")]
    assert len(nick_patches) == 2


async def test_voice_server_moved_mid_call(local_discord: Any) -> None:
    """A new VOICE_SERVER_UPDATE while the bot records (Discord moved the call): discord.py
    closes its voice websocket and identifies again; the local Discord removes the bot's old
    MLS leaf (epoch 2) and adds its new key package (epoch 3); the member's next audio is
    recorded."""
    server, info = local_discord
    alice_info = info["users"][0]
    async with bot_and_alice_in_voice(info) as (bot, recorder, bot_voice, alice_voice):
        before = await play(alice_voice, tone_pcm(50, 440.0))
        await asyncio.sleep(0.5)
        assert server.gateway is not None and server.voice is not None
        old_ssrc = server.voice.connections[bot.user.id].ssrc  # type: ignore[union-attr]
        assert await server.gateway.move_voice_server(int(info["application_id"]))
        await _until(lambda: server.voice is not None and bot_voice.is_connected()
                     and server.voice.connections[int(info["application_id"])].ssrc
                     != old_ssrc, "the bot's new voice connection")
        await dave_ready(bot_voice, alice_voice, epoch=3)
        after = await play(alice_voice, tone_pcm(50, 440.0))
        await recorder.finish()
    frames = recorder.sink.frames[alice_info["id"]]
    stats = recorder.conn.receiver.stats
    print(f"frames sent {before} + {after}, recorded {len(frames)}; "
          f"DAVE {stats.decrypt[alice_info['id']]}")
    assert len(frames) == before + after
    assert not stats.decrypt[alice_info["id"]].failures


@pytest.mark.parametrize("fault", ["bad-token", "no-connect"])
async def test_discord_source_refuses_clearly(local_discord: Any, fault: str) -> None:
    """The recorder's `DiscordSource` against a refusing Discord: a bad token (REST 401)
    and a voice channel whose overwrite denies the bot Connect end in InvalidInputError
    naming the cause, within seconds (never a recording)."""
    server, info = local_discord
    args = [str(server.state_dir / "discord.json")]
    if fault == "bad-token":
        args.append("MTIz.bad.token")
    else:
        server.world.voice.overwrites.append(
            Overwrite(int(info["application_id"]), 1, deny=CONNECT))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.local_discord_recorder", *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode != 0
    expected = ("InvalidInputError: token: Discord refused the bot token"
                if fault == "bad-token" else "InvalidInputError: channelId: the bot lacks "
                                             "View Channel/Connect")
    assert expected in err.decode()
    assert server.voice is not None and not server.voice.connections
