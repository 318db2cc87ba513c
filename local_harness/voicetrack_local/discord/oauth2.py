"""OAuth2 authorization-code grant of the local Discord, for the web page's log-in tests.

Endpoints and shapes follow the Discord developer docs, "Topics › OAuth2" (RFC 6749 §4.1):

- `GET /oauth2/authorize?response_type=code&client_id&scope&state&redirect_uri[&prompt]`
  shows a small consent form listing the local users (Discord's own consent screen, with
  the account picker the real one does not need); `POST /oauth2/authorize` (the form) or
  `GET` with `login_hint=<user name or id>` logs that user in and redirects (302) to
  `redirect_uri?code=…&state=…`. A bad `client_id`, `response_type` or scope is answered
  with 400, never redirected (RFC 6749 §4.1.2.1: an invalid client or redirect URI must
  not redirect).
- `POST /api/v10/oauth2/token` (also `/api/oauth2/token`), form-encoded
  `grant_type=authorization_code&code&redirect_uri` with the client credentials in the
  form or in HTTP Basic auth → `{"access_token", "token_type": "Bearer", "expires_in",
  "refresh_token", "scope"}`. Errors are RFC 6749 §5.2 JSON (`invalid_client` 401,
  `invalid_grant` 400 for an unknown, used or expired code or a redirect URI that differs
  from the one authorized, `unsupported_grant_type` 400). A code is single-use and lives
  `CODE_TTL_S`.
- `GET /api/v10/users/@me` with `Authorization: Bearer <access token>` (scope `identify`)
  → the User object; `GET /api/v10/users/@me/guilds` (scope `guilds`) → partial guilds
  `{id, name, icon, banner, owner, permissions (decimal string), features}`
  ("Resources › User › Get Current User Guilds"). Bot tokens keep working on `/users/@me`
  (the `Rest` handler answers them).

The world's guild holds the world's users (its first user owns it, so has every
permission); besides them this module keeps `outsiders`: users who are members only of a
second guild (`outsider_guild_id`), so a test can log in as someone of another guild.
`VOICETRACK_LOCAL_DISCORD_EXTRA_GUILDS` (guild ids, comma-separated) makes the world's users
members of those guilds too, with the same permissions (the demo's recordings carry a fixed
guild id).
"""

from __future__ import annotations

import base64
import html
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from voicetrack_local.discord.rest import API_PREFIX, ApiError, _json
from voicetrack_local.discord.world import User, World, new_token, snowflake

ALL_PERMISSIONS = (1 << 53) - 1
"""What a guild owner's `permissions` shows: every bit ("Permissions": owners have all)."""
CODE_TTL_S = 600
"""Validity of an authorization code (RFC 6749 §4.1.2 recommends at most 10 minutes)."""
TOKEN_TTL_S = 604_800
"""`expires_in` of an access token (Discord answers 604800, one week)."""
SCOPES = frozenset({"identify", "guilds", "email", "guilds.members.read"})
EXTRA_GUILDS_ENV = "VOICETRACK_LOCAL_DISCORD_EXTRA_GUILDS"


@dataclass
class Grant:
    """One issued code or token: who, which scopes, for which redirect URI, until when."""

    user: User
    scopes: frozenset[str]
    redirect_uri: str
    expires_at: float


@dataclass
class OAuth2:
    """The OAuth2 provider over `world`: the application's client id is the world's
    application id; `client_secret` is made here."""

    world: World
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    outsiders: list[User] = field(default_factory=list)
    outsider_guild_id: int = field(default_factory=snowflake)
    extra_guild_ids: list[str] = field(default_factory=list)
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, Grant] = field(default_factory=dict)

    @classmethod
    def create(cls, world: World, outsider_names: tuple[str, ...] = ("mallory",)) -> OAuth2:
        """A provider with one outsider user per name (members of the second guild only)
        and the extra guilds of `VOICETRACK_LOCAL_DISCORD_EXTRA_GUILDS`."""
        outsiders = [User(uid, name, new_token(uid))
                     for uid, name in ((snowflake(), n) for n in outsider_names)]
        extra = [g.strip() for g in os.environ.get(EXTRA_GUILDS_ENV, "").split(",")
                 if g.strip().isdigit()]
        return cls(world, outsiders=outsiders, extra_guild_ids=extra)

    @property
    def client_id(self) -> str:
        return str(self.world.application_id)

    def add_routes(self, app: web.Application) -> None:
        """Register the endpoints (see the module docstring) and the Bearer middleware."""
        app.router.add_get("/oauth2/authorize", self.authorize)
        app.router.add_post("/oauth2/authorize", self.authorize)
        app.router.add_post("/api/oauth2/token", self.token)
        app.router.add_post(API_PREFIX + "/oauth2/token", self.token)
        app.router.add_post(API_PREFIX + "/oauth2/token/revoke", self.revoke)
        app.router.add_get(API_PREFIX + "/users/@me/guilds", self.my_guilds)
        app.middlewares.append(self.bearer_me)

    def summary(self) -> dict[str, Any]:
        """What `discord.json` gains: the client credentials, the authorize URL, and the
        outsiders with their guild."""
        return {"oauth2": {
            "client_id": self.client_id, "client_secret": self.client_secret,
            "authorize_path": "/oauth2/authorize", "token_path": API_PREFIX + "/oauth2/token",
            "outsider_guild_id": str(self.outsider_guild_id),
            "outsiders": [{"id": str(u.id), "name": u.name} for u in self.outsiders]}}

    # -- authorize ------------------------------------------------------------------------

    def _login_candidates(self) -> list[User]:
        return [*self.world.users, *self.outsiders]

    def _find_user(self, hint: str) -> User | None:
        return next((u for u in self._login_candidates() if hint in (u.name, str(u.id))), None)

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        """Consent form (GET) or consent given (POST, or GET with `login_hint`)."""
        q = dict(request.query)
        if request.method == "POST":
            q.update({k: str(v) for k, v in (await request.post()).items()})
        if q.get("client_id") != self.client_id:
            return web.Response(status=400, text="invalid client_id")
        if q.get("response_type") != "code":
            return web.Response(status=400, text="unsupported response_type")
        scopes = frozenset(q.get("scope", "").split())
        if not scopes or not scopes <= SCOPES:
            return web.Response(status=400, text=f"invalid scope {q.get('scope')!r}")
        redirect_uri = q.get("redirect_uri", "")
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            return web.Response(status=400, text="invalid redirect_uri")
        hint = q.get("login_hint") or q.get("user")
        if not hint:
            return self._consent_form(q)
        user = self._find_user(hint)
        if user is None:
            return web.Response(status=400, text=f"unknown user {hint!r}")
        code = secrets.token_urlsafe(24)
        self.codes[code] = Grant(user, scopes, redirect_uri, time.time() + CODE_TTL_S)
        answer = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        query = f"{parts.query}&{urlencode(answer)}" if parts.query else urlencode(answer)
        raise web.HTTPFound(urlunsplit(parts._replace(query=query)))

    def _consent_form(self, q: dict[str, str]) -> web.Response:
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" '
                         f'value="{html.escape(v)}">' for k, v in q.items())
        options = "".join(f'<option value="{u.id}">{html.escape(u.name)}</option>'
                          for u in self._login_candidates())
        body = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width'>"
            "<title>Authorize - local Discord</title></head><body>"
            f"<h1>Authorize {html.escape(self.world.bot.name)}</h1>"
            f"<p>Scopes: {html.escape(q.get('scope', ''))}</p>"
            f"<form method=post action='/oauth2/authorize'>{hidden}"
            f"<label for=user>Log in as</label> <select id=user name=user>{options}</select>"
            " <button type=submit>Authorize</button></form></body></html>")
        return web.Response(text=body, content_type="text/html")

    # -- token ----------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        """Exchange a code for an access token (RFC 6749 §4.1.3, §5.1, §5.2)."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                client_id, _, client_secret = (base64.b64decode(auth[6:]).decode()
                                               .partition(":"))
            except (ValueError, UnicodeDecodeError):
                return _oauth_error(401, "invalid_client")
        if client_id != self.client_id or not secrets.compare_digest(
                client_secret or "", self.client_secret):
            return _oauth_error(401, "invalid_client")
        if form.get("grant_type") != "authorization_code":
            return _oauth_error(400, "unsupported_grant_type")
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or grant.expires_at < time.time():
            return _oauth_error(400, "invalid_grant", "unknown, used or expired code")
        if form.get("redirect_uri") != grant.redirect_uri:
            return _oauth_error(400, "invalid_grant", "redirect_uri differs")
        access = secrets.token_urlsafe(30)
        self.tokens[access] = Grant(grant.user, grant.scopes, grant.redirect_uri,
                                    time.time() + TOKEN_TTL_S)
        return _json({"access_token": access, "token_type": "Bearer",
                      "expires_in": TOKEN_TTL_S, "refresh_token": secrets.token_urlsafe(30),
                      "scope": " ".join(sorted(grant.scopes))})

    async def revoke(self, request: web.Request) -> web.Response:
        """Token revocation (RFC 7009 §2.1; Discord's `/oauth2/token/revoke`): form
        `token` with the client credentials in the form or HTTP Basic auth; 200 whether or
        not the token was known, `invalid_client` 401 for bad credentials."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
        if client_id != self.client_id or not secrets.compare_digest(
                client_secret or "", self.client_secret):
            return _oauth_error(401, "invalid_client")
        self.tokens.pop(form.get("token", ""), None)
        return _json({})

    # -- bearer endpoints -----------------------------------------------------------------

    def _bearer(self, request: web.Request, scope: str) -> User:
        self.world.log.append((request.method, request.path))
        header = request.headers.get("Authorization", "")
        grant = self.tokens.get(header.removeprefix("Bearer ").strip()) if header.startswith(
            "Bearer ") else None
        if grant is None or grant.expires_at < time.time():
            raise ApiError(401, "401: Unauthorized", 0)
        if scope not in grant.scopes:
            raise ApiError(403, "Missing Access", 50001)
        return grant.user

    @web.middleware
    async def bearer_me(self, request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
        """`GET /users/@me` with a Bearer token is this provider's; anything else goes on
        to the handler (the bot's `Bot` token on the same path included)."""
        if (request.path == API_PREFIX + "/users/@me"
                and request.headers.get("Authorization", "").startswith("Bearer ")):
            return _json(self._bearer(request, "identify").json())
        return await handler(request)

    async def my_guilds(self, request: web.Request) -> web.Response:
        """The caller's partial guilds with their `permissions` in each."""
        user = self._bearer(request, "guilds")
        w = self.world
        guilds: list[dict[str, Any]]
        if any(u is user for u in self.outsiders):
            guilds = [{"id": str(self.outsider_guild_id), "name": "Elsewhere", "icon": None,
                       "banner": None, "owner": True, "permissions": str(ALL_PERMISSIONS),
                       "features": []}]
        elif not w.is_member(user.id):  # removed from the guild (and its extra guilds)
            guilds = []
        else:
            owner = bool(w.users) and w.users[0] is user
            guilds = [{"id": gid, "name": name, "icon": None, "banner": None, "owner": owner,
                       "permissions": str(ALL_PERMISSIONS if owner
                                          else w.everyone_permissions),
                       "features": []}
                      for gid, name in ((str(w.guild_id), w.guild_json()["name"]),
                                        *((g, f"Guild {g}") for g in self.extra_guild_ids))]
        return _json(guilds)


def _oauth_error(status: int, error: str, description: str | None = None) -> web.Response:
    body: dict[str, str] = {"error": error}
    if description:
        body["error_description"] = description
    return _json(body, status=status)
