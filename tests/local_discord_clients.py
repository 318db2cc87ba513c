"""Unmodified discord.py 2.7.1 clients pointed at the local Discord (tests only).

discord.py has no documented setting for another Discord; it reads two class attributes,
which are what a deployment would set too (see docs/local-discord.md):
`discord.http.Route.BASE` (the REST base, e.g. `https://127.0.0.1:PORT/api/v10`) and
`discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY` (the first gateway URL; READY's
`resume_gateway_url` is used after it). TLS trust goes through the Client's supported
`connector=` argument (an aiohttp `TCPConnector` whose SSL context trusts the harness CA),
used for REST, the gateway and the voice websocket alike.
"""

from __future__ import annotations

import asyncio
import io
import ssl
from typing import Any

import aiohttp
import discord
import numpy as np
import yarl

from tests.discord_rig import decode_frames
from voicetrack.audio import CHANNELS, OPUS_SILENCE_FRAME, SAMPLE_RATE


def point_discord_py(monkeypatch: Any, info: dict[str, Any]) -> None:
    """Aim discord.py's REST base and first gateway URL at the local Discord."""
    monkeypatch.setattr(discord.http.Route, "BASE", info["api_base"])
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        yarl.URL(info["gateway_url"]))


def voice_intents() -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    return intents


async def start_client(token: str, ca_bundle: str) -> tuple[discord.Client, asyncio.Task[None]]:
    """Log in with `token` and connect; returns once READY and GUILD_CREATE are in."""
    ctx = ssl.create_default_context(cafile=ca_bundle)
    client = discord.Client(intents=voice_intents(), connector=aiohttp.TCPConnector(ssl=ctx))
    await client.login(token)
    runner = asyncio.create_task(client.connect(reconnect=False))
    await asyncio.wait_for(client.wait_until_ready(), 15)
    return client, runner


async def stop_client(client: discord.Client, runner: asyncio.Task[None]) -> None:
    for vc in list(client.voice_clients):
        await vc.disconnect(force=True)
    await client.close()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def dave_ready(*clients: discord.VoiceClient, epoch: int | None = None,
                     timeout: float = 10.0) -> None:
    """Wait until every voice client's DAVE session is ready (and at `epoch`, if given)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sessions = [vc._connection.dave_session for vc in clients]
        if all(s is not None and s.ready and (epoch is None or s.epoch == epoch)
               for s in sessions):
            return
        if loop.time() > deadline:
            states = [(s and s.ready, s and s.epoch) for s in sessions]
            raise TimeoutError(f"DAVE not ready (ready, epoch): {states}")
        await asyncio.sleep(0.05)


async def play(vc: discord.VoiceClient, pcm: bytes) -> int:
    """Play stereo s16le 48 kHz `pcm` through discord.py's own send path (encoder, DAVE,
    transport AEAD, UDP); returns the number of RTP packets it sent (its own sequence)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    before = vc.sequence
    vc.play(discord.PCMAudio(io.BytesIO(pcm)),
            after=lambda error: loop.call_soon_threadsafe(done.set))
    seconds = len(pcm) / (SAMPLE_RATE * CHANNELS * 2)
    await asyncio.wait_for(done.wait(), seconds + 30)
    return (vc.sequence - before) & 0xFFFF


def dominant_hz(frames: dict[int, bytes]) -> float:
    """Decode a speaker's frames in slot order and return the strongest frequency (Hz)."""
    packets = [frames[s] for s in sorted(frames) if frames[s] != OPUS_SILENCE_FRAME]
    pcm = np.frombuffer(decode_frames(packets), "<i2").reshape(-1, CHANNELS)[:, 0]
    middle = pcm[len(pcm) // 4: 3 * len(pcm) // 4].astype(float)
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(middle))
