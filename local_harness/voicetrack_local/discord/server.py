"""The local Discord: REST, gateway and voice gateway over one TLS port, and the UDP relay.

`LocalDiscord(state_dir, settings)` serves, on `127.0.0.1`:

- `https://127.0.0.1:<port>/api/v10/...` (REST, `rest.py`),
- `wss://127.0.0.1:<port>/gateway` (gateway v10, `gateway.py`),
- `wss://127.0.0.1:<port>/` (voice gateway v8, `voice.py`; VOICE_SERVER_UPDATE's endpoint is
  `127.0.0.1:<port>` and clients append `/?v=8`),
- `udp://127.0.0.1:<udp_port>` (media relay, `relay.py`),

with a serving certificate (SANs 127.0.0.1, localhost) issued by the local harness CA
(`voicetrack_local.pki`, `<state>/pki/ca.crt`). `start()` writes `<state>/discord.json`:
`{api_base, gateway_url, ca_bundle, bot_token, application_id, guild_id, voice_channel_id,
text_channel_id, users: [{id, token, name}], voice_endpoint, udp_port, oauth2}` (`oauth2.py`:
the OAuth2 client credentials and the users of a second guild).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from voicetrack_local import pki
from voicetrack_local.discord.gateway import Gateway
from voicetrack_local.discord.interactions import interaction
from voicetrack_local.discord.oauth2 import OAuth2
from voicetrack_local.discord.relay import Faults, Relay
from voicetrack_local.discord.rest import Rest, rate_limit_headers
from voicetrack_local.discord.voice import VoiceServer
from voicetrack_local.discord.world import INTENT_GUILD_MEMBERS, World

HOST = "127.0.0.1"


@dataclass
class Settings:
    """What the local Discord serves: ports (0 = any free), member names, relay faults,
    and whether voice clients must speak DAVE."""

    port: int = 0
    udp_port: int = 0
    users: list[str] = field(default_factory=lambda: ["alice", "bob", "carol"])
    faults: Faults = field(default_factory=Faults)
    require_dave: bool = True


def serving_cert(state_dir: Path) -> pki.CertPair:
    """The local Discord's serving certificate, issued once by the harness CA."""
    return pki.issue_server_cert(state_dir, "discord", "voicetrack-local-discord",
                                 [HOST, "localhost"])


class LocalDiscord:
    """The running local Discord; `world` is its state, `relay.stats` its media counters."""

    def __init__(self, state_dir: Path, settings: Settings | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.settings = settings or Settings()
        self.world = World.create(self.settings.users)
        self.oauth2 = OAuth2.create(self.world)
        self.runner: web.AppRunner | None = None
        self.relay: Relay | None = None
        self.voice: VoiceServer | None = None
        self.gateway: Gateway | None = None
        self.port = 0
        self.udp_port = 0
        self._udp: asyncio.DatagramTransport | None = None

    @property
    def ca_bundle(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    @property
    def api_base(self) -> str:
        return f"https://{HOST}:{self.port}/api/v10"

    def client_ssl(self) -> ssl.SSLContext:
        """An SSL context that trusts this Discord (for aiohttp connectors)."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    async def start(self) -> dict[str, Any]:
        """Bind, serve, write `discord.json`; returns its content."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cert = serving_cert(self.state_dir)
        loop = asyncio.get_running_loop()
        voice = self.voice = VoiceServer(HOST, 0, require_dave=self.settings.require_dave)
        relay = self.relay = Relay(voice, self.settings.faults)
        udp, _ = await loop.create_datagram_endpoint(
            lambda: relay, local_addr=(HOST, self.settings.udp_port))
        self._udp = udp
        self.udp_port = voice.udp_port = udp.get_extra_info("sockname")[1]

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self.settings.port))
        self.port = sock.getsockname()[1]
        gateway_url = f"wss://{HOST}:{self.port}/gateway"
        endpoint = f"{HOST}:{self.port}"
        gateway = self.gateway = Gateway(self.world, voice, gateway_url, endpoint)
        app = web.Application(middlewares=[rate_limit_headers])
        app.router.add_get("/gateway", gateway.handle)
        app.router.add_get("/", voice.handle)
        Rest(self.world, gateway_url, gateway.dispatch).add_routes(app)
        self.oauth2.add_routes(app)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert.crt), str(cert.key))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, sock, ssl_context=ctx).start()
        info = {"api_base": self.api_base, "gateway_url": gateway_url,
                "ca_bundle": str(self.ca_bundle), **self.world.summary(),
                "voice_endpoint": endpoint, "udp_port": self.udp_port,
                **self.oauth2.summary()}
        path = self.state_dir / "discord.json"
        path.write_text(json.dumps(info, indent=2) + "\n")
        path.chmod(0o600)
        return info

    async def interact(self, user_id: int, command: str, subcommand: str | None = None,
                       options: dict[str, str | int | bool] | None = None) -> dict[str, Any]:
        """Member `user_id` types a slash command: INTERACTION_CREATE goes to the bot's
        gateway sessions; returns the payload (its `token` finds the bot's answers in
        `world.interaction_responses` and `world.messages`)."""
        assert self.gateway is not None
        payload = interaction(self.world, user_id, command, subcommand, options)
        for session in list(self.gateway.sessions.values()):
            if session.user is self.world.bot:
                await session.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def set_roles(self, user_id: int, role_ids: list[int]) -> None:
        """Give member `user_id` exactly the roles `role_ids` (ids from `world.add_role`), as
        a moderator would: GUILD_MEMBER_UPDATE ("Gateway Events › Guild Member Update": the
        member object with `guild_id`) goes to the sessions with the GUILD_MEMBERS intent.
        Raises KeyError for an unknown user or role."""
        assert self.gateway is not None
        user = self.world.by_id(user_id)
        known = {r.id for r in self.world.roles}
        if user is None or not set(role_ids) <= known:
            raise KeyError(f"no user {user_id} or unknown role in {role_ids}")
        user.roles = list(role_ids)
        member = {**user.member(), "guild_id": str(self.world.guild_id)}
        await self.gateway.dispatch("GUILD_MEMBER_UPDATE", member, INTENT_GUILD_MEMBERS)

    async def stop(self) -> None:
        """Close every websocket, the site and the relay socket."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
