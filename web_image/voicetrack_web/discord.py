"""The OAuth2 client side of "Log in with Discord" (Discord docs, "Topics › OAuth2",
authorization code grant; RFC 6749 §4.1) and the two user endpoints the page reads.

1. `authorize_url(state)`: send the browser to Discord's `/oauth2/authorize` with
   `response_type=code`, `client_id`, `scope=identify guilds`, `redirect_uri`, `state`.
2. `identify(code)`: `POST <api>/oauth2/token` (form: `grant_type=authorization_code`,
   `code`, `redirect_uri`; client credentials in HTTP Basic auth, RFC 6749 §2.3.1), then
   `GET <api>/users/@me` (scope `identify`) and `GET <api>/users/@me/guilds` (scope
   `guilds`; each partial guild carries `permissions`, the member's permission bits as a
   decimal string, and `owner`). The access token is kept in the session cookie,
   encrypted (`sessions.TokenBox`), so `guilds(token)` can read the guild list again later
   (401 = revoked or expired: log in again; 429 = rate limited, `RateLimited` carries
   Discord's `Retry-After`).
   `revoke(token)` at log-out: `POST <api>/oauth2/token/revoke` (form `token`,
   `token_type_hint=access_token`, client credentials in HTTP Basic auth; RFC 7009 §2.1,
   Discord docs "Topics › OAuth2").
3. `member_name(guild, user)`: with the bot token (optional), `GET <api>/guilds/{guild}/
   members/{user}` ("Resources › Guild › Get Guild Member"): the member's display name,
   nick, else global name, else username.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from voicetrack_web.settings import WebSettings

SCOPES = "identify guilds"
ADMINISTRATOR = 0x8
"""Permission bit ADMINISTRATOR (Discord docs, "Topics › Permissions")."""
MANAGE_GUILD = 0x20
"""Permission bit MANAGE_GUILD, "Manage Server" (Discord docs, "Topics › Permissions")."""
HTTP_TIMEOUT_S = 10.0


class DiscordAuthError(Exception):
    """Discord refused the code or the token, or answered something unexpected; the message
    says which step (no secret in it)."""


class TokenRefused(DiscordAuthError):
    """Discord answered 401 to the user's access token (revoked or expired)."""


class RateLimited(DiscordAuthError):
    """Discord answered 429; `retry_after_s` is its `Retry-After` (s, 0 when absent or
    unreadable)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class GuildAccess:
    """A guild the user is a member of: `manager` when they own it or hold Manage Server
    or Administrator there (they see all its meetings)."""

    id: str
    name: str
    manager: bool


@dataclass(frozen=True)
class Identity:
    """Who logged in: the Discord user id (snowflake string), a display name, guilds."""

    user_id: str
    name: str
    guilds: list[GuildAccess]
    access_token: str = ""


def guild_access(partial: dict[str, Any]) -> GuildAccess:
    """A `GuildAccess` from a partial guild of `/users/@me/guilds`."""
    perms = int(partial.get("permissions") or 0)
    manager = bool(partial.get("owner")) or bool(perms & (ADMINISTRATOR | MANAGE_GUILD))
    return GuildAccess(str(partial["id"]), str(partial.get("name") or partial["id"]), manager)


def display_name(member: dict[str, Any]) -> str | None:
    """A Guild Member object's display name: `nick`, else the user's `global_name`, else
    `username` (Discord docs, "Resources › Guild › Guild Member Object"); None if none."""
    user = member.get("user") or {}
    for name in (member.get("nick"), user.get("global_name"), user.get("username")):
        if isinstance(name, str) and name.strip():
            return name
    return None


class DiscordOAuth:
    """The OAuth2 client of one Discord application (`settings.client_id`)."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        verify: ssl.SSLContext | bool = True
        if settings.discord_ca_bundle:
            verify = ssl.create_default_context(cafile=settings.discord_ca_bundle)
        self.http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=verify)

    def authorize_url(self, state: str) -> str:
        """The URL to send the browser to; `state` is the anti-CSRF value (RFC 6749 §10.12)
        the callback must see again."""
        query = urlencode({"response_type": "code", "client_id": self.settings.client_id,
                           "scope": SCOPES, "redirect_uri": self.settings.redirect_uri,
                           "state": state, "prompt": "none"})
        return f"{self.settings.discord_authorize_url}?{query}"

    async def identify(self, code: str) -> Identity:
        """Exchange `code` and read the user and their guilds. Raises DiscordAuthError."""
        api = self.settings.discord_api_base
        try:
            resp = await self.http.post(
                f"{api}/oauth2/token",
                data={"grant_type": "authorization_code", "code": code,
                      "redirect_uri": self.settings.redirect_uri},
                auth=(self.settings.client_id, self.settings.client_secret))
            if resp.status_code != 200:
                raise DiscordAuthError(f"token exchange refused: HTTP {resp.status_code} "
                                       f"{_oauth_error(resp)}")
            token = resp.json()
            if str(token.get("token_type", "")).lower() != "bearer":
                raise DiscordAuthError("token exchange: not a Bearer token")
            access = str(token["access_token"])
            headers = {"Authorization": f"Bearer {access}"}
            me = await self.http.get(f"{api}/users/@me", headers=headers)
        except httpx.HTTPError as exc:
            raise DiscordAuthError(f"Discord unreachable: {type(exc).__name__}") from exc
        if me.status_code != 200:
            raise DiscordAuthError(f"user read refused: HTTP {me.status_code}")
        user = me.json()
        name = user.get("global_name") or user.get("username") or str(user["id"])
        return Identity(str(user["id"]), str(name), await self.guilds(access), access)

    async def guilds(self, access_token: str) -> list[GuildAccess]:
        """The user's guilds now (`GET /users/@me/guilds` with their Bearer token).
        Raises TokenRefused on 401, RateLimited on 429, DiscordAuthError for anything
        else unexpected (5xx, unreachable)."""
        try:
            resp = await self.http.get(f"{self.settings.discord_api_base}/users/@me/guilds",
                                       headers={"Authorization": f"Bearer {access_token}"})
        except httpx.HTTPError as exc:
            raise DiscordAuthError(f"Discord unreachable: {type(exc).__name__}") from exc
        if resp.status_code == 401:
            raise TokenRefused("the Discord log-in expired or was revoked")
        if resp.status_code == 429:
            raise RateLimited("guild list refused: HTTP 429", _retry_after(resp))
        if resp.status_code != 200:
            raise DiscordAuthError(f"guild list refused: HTTP {resp.status_code}")
        return [guild_access(g) for g in resp.json()]

    async def revoke(self, access_token: str) -> bool:
        """Revoke the user's access token (RFC 7009; best effort, at log-out): True when
        Discord answered 200, False for any other answer or when it is unreachable."""
        try:
            resp = await self.http.post(
                f"{self.settings.discord_api_base}/oauth2/token/revoke",
                data={"token": access_token, "token_type_hint": "access_token"},
                auth=(self.settings.client_id, self.settings.client_secret))
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def member_name(self, guild_id: str, user_id: str) -> str | None:
        """The member's display name in the guild (nick, else global name, else username)
        read with the bot token; None without a token, for a non-member (404) or any
        failure (the caller shows the id)."""
        if not self.settings.bot_token:
            return None
        try:
            resp = await self.http.get(
                f"{self.settings.discord_api_base}/guilds/{guild_id}/members/{user_id}",
                headers={"Authorization": f"Bot {self.settings.bot_token}"})
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        try:
            return display_name(resp.json())
        except (ValueError, AttributeError):
            return None

    async def close(self) -> None:
        await self.http.aclose()


def _retry_after(resp: httpx.Response) -> float:
    """A 429's wait (s): the `Retry-After` header, else the JSON `retry_after`, else 0."""
    for raw in (resp.headers.get("retry-after"), _json_field(resp, "retry_after")):
        try:
            value = float(raw) if raw is not None else -1.0
        except (TypeError, ValueError):
            continue
        if value >= 0:
            return value
    return 0.0


def _json_field(resp: httpx.Response, name: str) -> Any:
    try:
        doc = resp.json()
    except ValueError:
        return None
    return doc.get(name) if isinstance(doc, dict) else None


def _oauth_error(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error", ""))
    except ValueError:
        return ""
