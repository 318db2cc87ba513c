"""Where Discord is: the recorder's and the bot's one place for Discord's endpoints.

discord.py 2.7.1 has no API-base setting. It reads two class attributes, which
`DiscordEndpoint.apply` sets, before any client is made: `discord.http.Route.BASE` (the
REST base every route is built from) and `discord.gateway.DiscordWebSocket.
DEFAULT_GATEWAY` (the first gateway URL; READY's `resume_gateway_url` is used after it).
TLS trust goes through discord.py's supported `connector=` argument: an aiohttp
`TCPConnector` whose SSL context trusts `ca_bundle`, which covers REST, the gateway and
the voice websocket alike. Unset settings mean Discord itself and the system trust.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import discord
import yarl

from voicetrack.errors import InvalidInputError

DISCORD_API_BASE = "https://discord.com/api/v10"
"""discord.py 2.7.1's own `Route.BASE`."""
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"
"""discord.py 2.7.1's own `DiscordWebSocket.DEFAULT_GATEWAY`."""

ENV_API_BASE = "VOICETRACK_DISCORD_API_BASE"
ENV_GATEWAY_URL = "VOICETRACK_DISCORD_GATEWAY_URL"
ENV_CA_BUNDLE = "VOICETRACK_DISCORD_CA_BUNDLE"


@dataclass(frozen=True)
class DiscordEndpoint:
    """Discord's REST base (`https://…/api/v10`), first gateway URL (`wss://…`) and the
    CA bundle (a PEM file path; None = the system trust) to verify them with."""

    api_base: str = DISCORD_API_BASE
    gateway_url: str = DISCORD_GATEWAY_URL
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DiscordEndpoint:
        """From VOICETRACK_DISCORD_API_BASE, _GATEWAY_URL and _CA_BUNDLE (empty = unset).
        Raises InvalidInputError for a URL of the wrong scheme or a missing CA file."""
        env = os.environ if environ is None else environ
        endpoint = cls(api_base=env.get(ENV_API_BASE) or DISCORD_API_BASE,
                       gateway_url=env.get(ENV_GATEWAY_URL) or DISCORD_GATEWAY_URL,
                       ca_bundle=env.get(ENV_CA_BUNDLE) or None)
        endpoint.check()
        return endpoint

    def check(self) -> None:
        """Raises InvalidInputError naming the first bad setting."""
        if not self.api_base.startswith(("https://", "http://")):
            raise InvalidInputError(f"{ENV_API_BASE}: {self.api_base!r} is not an http(s) URL")
        if not self.gateway_url.startswith(("wss://", "ws://")):
            raise InvalidInputError(
                f"{ENV_GATEWAY_URL}: {self.gateway_url!r} is not a ws(s) URL")
        if self.ca_bundle is not None and not os.path.isfile(self.ca_bundle):
            raise InvalidInputError(f"{ENV_CA_BUNDLE}: {self.ca_bundle!r} is not a file")

    def apply(self) -> None:
        """Point discord.py (process-wide) at this endpoint; call before making a client."""
        discord.http.Route.BASE = self.api_base.rstrip("/")
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def connector(self) -> aiohttp.TCPConnector | None:
        """An aiohttp connector trusting `ca_bundle` (None without one: discord.py's
        default). Call inside the running event loop; give it to one client only."""
        if self.ca_bundle is None:
            return None
        return aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.ca_bundle))
