"""Voice websocket close 4015 ("voice server crashed", Discord docs "Voice Close Event
Codes": the client should resume) while the bot records: it must resume the same voice
session (op 7 RESUME → op 9 RESUMED, same SSRC, transport key and DAVE group), so the
member's audio keeps arriving on the same UDP flow and nothing is lost."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tests.discord_rig import tone_pcm
from tests.integration import test_local_discord as base
from tests.local_discord_clients import play

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

local_discord = base.local_discord
_until = base._until
bot_and_alice_in_voice = base.bot_and_alice_in_voice


@pytest.mark.parametrize("code", [4015])
async def test_a_4015_close_is_resumed_without_losing_audio(local_discord: Any,
                                                            code: int) -> None:
    server, info = local_discord
    alice_info = info["users"][0]
    bot_id = int(info["application_id"])
    async with bot_and_alice_in_voice(info) as (_bot, recorder, bot_voice, alice_voice):
        assert server.voice is not None
        ssrc = server.voice.connections[bot_id].ssrc
        sending = asyncio.create_task(play(alice_voice, tone_pcm(400, 440.0)))  # 8 s
        await asyncio.sleep(2.0)
        first_ws = server.voice.connections[bot_id].ws
        assert await server.voice.close(bot_id, code)
        await _until(lambda: server.voice is not None and bot_voice.is_connected()
                     and server.voice.connections[bot_id].ws not in (None, first_ws),
                     "the bot's resumed voice websocket", timeout=10)
        assert server.voice.connections[bot_id].ssrc == ssrc  # the same session, resumed
        sent = await sending
        await recorder.finish()
    frames = recorder.sink.frames[alice_info["id"]]
    stats = recorder.conn.receiver.stats
    print(f"close {code}: frames sent {sent}, recorded {len(frames)}, "
          f"lost {stats.lost}, DAVE {stats.decrypt[alice_info['id']]}")
    assert len(frames) == sent
    assert not stats.decrypt[alice_info["id"]].failures


@pytest.mark.parametrize("code", [4015, 4006])
async def test_a_lost_voice_session_is_joined_again_within_seconds(local_discord: Any,
                                                                   code: int) -> None:
    """The voice server lost the bot's session and closes with `code`: 4015 (the resume
    then answers 4006) or 4006 "session no longer valid" (discord.py reconnects after its
    backoff). The bot joins afresh (new SSRC, new DAVE epoch) within seconds, not after
    discord.py's 30 s UDP-reader stall, and the member's audio after it is recorded."""
    server, info = local_discord
    alice_info = info["users"][0]
    bot_id = int(info["application_id"])
    async with bot_and_alice_in_voice(info) as (_bot, recorder, bot_voice, alice_voice):
        assert server.voice is not None
        conn = server.voice.connections[bot_id]
        sending = asyncio.create_task(play(alice_voice, tone_pcm(500, 440.0)))  # 10 s
        await asyncio.sleep(2.0)
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        await server.voice._remove(conn, close_code=code)  # the session is gone
        await _until(lambda: server.voice is not None and bot_voice.is_connected()
                     and bot_id in server.voice.connections
                     and server.voice.connections[bot_id] is not conn,
                     "the bot's new voice session", timeout=15)
        rejoined_s = loop.time() - closed_at
        sent = await sending
        await recorder.finish()
    frames = recorder.sink.frames[alice_info["id"]]
    print(f"close {code}, session lost: rejoined in {rejoined_s:.2f} s; frames sent {sent}, "
          f"recorded {len(frames)}")
    assert rejoined_s < 10
    assert len(frames) >= sent - 10 * 50  # at most the rejoin's seconds are missing
    assert len(frames) > 0.4 * sent


@pytest.mark.parametrize("when", ["at-join", "mid-session"])
async def test_a_dave_version_refusal_ends_the_source_with_4017(local_discord: Any,
                                                                when: str) -> None:
    """The voice server stops accepting the DAVE protocol version the recorder speaks
    (close 4017 on every identify): the recorder's `DiscordSource` (a subprocess) ends in
    VoiceRefused (an InvalidInputError) naming 4017 within seconds — at join, and
    mid-session after the server closes its connection — instead of retrying forever."""
    server, info = local_discord
    assert server.voice is not None
    bot_id = int(info["application_id"])
    if when == "at-join":
        server.voice.min_dave_version = 2
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.local_discord_recorder",
        str(server.state_dir / "discord.json"), cwd=base.REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        if when == "mid-session":
            await _until(lambda: server.voice is not None and bot_id in server.voice.connections
                         and server.voice.connections[bot_id].mode is not None,
                         "the recorder in the voice channel")
            server.voice.min_dave_version = 2
            assert await server.voice.close(bot_id, 4017)
        loop = asyncio.get_running_loop()
        started = loop.time()
        ended = asyncio.ensure_future(child.communicate())
        done, _ = await asyncio.wait({ended}, timeout=40)
        took = loop.time() - started
        if not done:  # fail with what the recorder said, not a bare TimeoutError
            child.terminate()
            _, err = await ended
            pytest.fail(f"{when}: the source still ran {took:.0f} s after the refusal; its "
                        f"log:\n{err.decode()[-4000:]}")
        _, err = ended.result()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    print(f"{when}: the source ended {took:.1f} s after the refusal")
    assert child.returncode != 0
    # VoiceRefused is an InvalidInputError: the recorder exits 2 with this message.
    assert ("VoiceRefused: discord: the voice server closed the connection with 4017"
            in err.decode()), err.decode()[-2000:]
    assert took < 20
