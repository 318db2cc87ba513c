"""Fixtures of the local-Discord session e2e modules: the local Discord, an operator that
passes its settings to recorder pods, and three logged-in discord.py members.

Module-scoped where they start processes, so each module gets its own local Discord and
operator. The operator serves `dsc-*` only (the suite's shared `stack` operator serves
`e2e-*`; two operators must not share a namespace).
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import discord
import pytest

from tests.discord_session_support import CLI
from tests.local_discord_clients import stop_client
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.stack import OperatorProcess, discord_operator_env, install_crds
from voicetrack_recorder.discord.endpoint import DiscordEndpoint


@pytest.fixture(scope="module")
def local_discord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`voicetrack local discord up` in a fresh state directory; `down` afterwards."""
    state = tmp_path_factory.mktemp("discord")
    out = subprocess.run([CLI, "local", "discord", "up", "--state-dir", str(state)],
                         capture_output=True, text=True, check=True, timeout=60)
    try:
        yield json.loads(Path(out.stdout.strip()).read_text())
    finally:
        subprocess.run([CLI, "local", "discord", "down", "--state-dir", str(state)],
                       check=False, timeout=60)
        log = state / "discord.log"  # shown when a test of this module failed
        if log.exists():
            print("local Discord log tail:\n" + "\n".join(
                log.read_text(errors="replace").splitlines()[-60:]))


@pytest.fixture(scope="module")
def operator(cluster: Any, s3_server: S3Settings, local_discord: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator (SQLite) with the local Discord's settings for recorder pods."""
    install_crds(cluster.kubeconfig)
    ObjectStore(s3_server).ensure_bucket()
    d = tmp_path_factory.mktemp("operator")
    op = OperatorProcess(cluster.kubeconfig, s3_server, f"sqlite+aiosqlite:///{d}/vt.db",
                         d / "operator.log", extra_env={
                             "VOICETRACK_LOG_LEVEL": "INFO",
                             # its own namespaces only: the suite's shared operator
                             # serves e2e-*, and two operators must not share one
                             "VOICETRACK_NAMESPACES": "dsc-*",
                             **discord_operator_env(local_discord)})
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"operator log: {op.log_path}\n{op.tail(40)}")


@pytest.fixture
async def senders(local_discord: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[list[discord.Client]]:
    """The three members as logged-in discord.py clients (not yet in voice); the first
    also receives the text channel's messages (`client.seen`)."""
    for cls, attr in ((discord.http.Route, "BASE"),
                      (discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY")):
        monkeypatch.setattr(cls, attr, getattr(cls, attr))  # restored after the test
    endpoint = DiscordEndpoint(local_discord["api_base"], local_discord["gateway_url"],
                               local_discord["ca_bundle"])
    endpoint.apply()
    # the voice handshake's steps show in the failure report ("Captured log call")
    monkeypatch.setattr(logging.getLogger("discord"), "level", logging.INFO)
    clients, runners = [], []
    for i, user in enumerate(local_discord["users"]):
        intents = discord.Intents.none()
        intents.guilds = intents.voice_states = True
        intents.guild_messages = i == 0
        client = discord.Client(intents=intents, connector=endpoint.connector())
        seen: list[discord.Message] = []
        client.seen = seen  # type: ignore[attr-defined]

        async def on_message(message: discord.Message, seen: list[Any] = seen) -> None:
            seen.append(message)

        client.event(on_message)
        await client.login(user["token"])
        runners.append(asyncio.create_task(client.connect(reconnect=False)))
        await asyncio.wait_for(client.wait_until_ready(), 15)
        clients.append(client)
    yield clients
    for client, runner in zip(clients, runners, strict=True):
        await stop_client(client, runner)
