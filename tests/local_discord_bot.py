"""Run the recorder image's unmodified bot (`voicetrack-recorder bot`) against a local
Discord (a subprocess): `python -m tests.local_discord_bot DISCORD_JSON [bot options]`.

As for the recorder (`tests/local_discord_recorder.py`): `SSL_CERT_FILE` in the environment
makes aiohttp trust the local Discord's CA, and the two assignments below are the glue a
recorder/bot setting for the API base and gateway URL would replace. The token, namespace
and kubeconfig come from the usual VOICETRACK_* / KUBECONFIG variables.
"""

from __future__ import annotations

import json
import sys

import discord
import yarl

from voicetrack_recorder.main import app

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        info = json.load(f)
    discord.http.Route.BASE = info["api_base"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(info["gateway_url"])
    app(["bot", *sys.argv[2:]])
