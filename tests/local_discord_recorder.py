"""Run the recorder's unmodified `DiscordSource` against a local Discord (a subprocess).

`python -m tests.local_discord_recorder DISCORD_JSON [TOKEN]` (default: the bot token),
with `SSL_CERT_FILE` set to the local Discord's CA bundle in the environment (aiohttp
builds its verifying SSL context from OpenSSL's default paths when imported, and OpenSSL
reads SSL_CERT_FILE). The two assignments below are the whole of the glue — exactly what
a recorder setting for the API base and gateway URL would do (see docs/local-discord.md).
It records until SIGTERM, then prints one JSON line: `{"frames": {user_id: count}, "hz":
{user_id: dominant Hz}, "stats": ReceiveStats.as_dict()}`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import discord
import yarl

from tests.discord_rig import CaptureSink
from tests.local_discord_clients import dominant_hz
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.source import DiscordSource


async def main(path: str, token: str | None = None) -> None:
    with open(path) as f:
        info = json.load(f)
    discord.http.Route.BASE = info["api_base"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(info["gateway_url"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sink = CaptureSink()
    source = DiscordSource(token=token or info["bot_token"], guild_id=info["guild_id"],
                           channel_id=info["voice_channel_id"],
                           clock=SessionClock(int(time.time() * 1000)), sink=sink)
    await source.run(stop)
    print(json.dumps({"frames": {u: len(f) for u, f in sink.frames.items()},
                      "hz": {u: dominant_hz(f) for u, f in sink.frames.items()},
                      "stats": source.stats.as_dict()}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
