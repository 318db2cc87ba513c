"""REST API v10, the subset Voicetrack's bot and recorder use (aiohttp handlers).

Paths and bodies follow the Discord developer docs: "Topics › Gateway › Get Gateway Bot",
"Resources › User › Get Current User", "Resources › Application › Get Current
Application" (discord.py reads `/oauth2/applications/@me`), "Resources › Guild › Get Guild /
Get Guild Channels / Get Guild Member / Modify Current Member", "Resources › Channel › Get
Channel", "Resources › Message › Create Message", "Interactions › Application Commands ›
Bulk Overwrite Global/Guild Application Commands", "Interactions › Receiving and Responding ›
Create Interaction Response / Create, Edit, Get Followup Message". Errors are JSON
`{"message", "code"}` ("Topics › Opcodes and Status Codes › JSON Error Codes"): 401 with
code 0 for a bad token, 404 with 10003/10004/10007 for an unknown channel/guild/member.
A message whose embeds break "Resources › Message › Embed Limits" (title 256, description
4096, 25 fields, field name 256 and value 1024, footer 2048, author name 256, 6000
characters in all the message's embeds together, 10 embeds) is refused as Discord does:
400 "Invalid Form Body", code 50035 (`embed_problem`).
Every response carries the rate-limit headers of "Topics › Rate Limits" (limit 50 per 1 s
bucket, never exhausted here).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from voicetrack_local.discord.world import (
    CHANGE_NICKNAME,
    INTENT_GUILD_MEMBERS,
    User,
    World,
    snowflake,
)


class Dispatch(Protocol):
    """Sends a gateway DISPATCH `event` to every session with the `intent` bit (and to
    the sessions of user `owner`, if given)."""

    def __call__(self, event: str, data: dict[str, Any], intent: int,
                 owner: int | None = None) -> Awaitable[None]: ...

INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
API_PREFIX = "/api/v10"
RATE_LIMIT = 50


def _json(data: Any, status: int = 200) -> web.Response:
    """A JSON response with `Content-Type: application/json` exactly, as Discord sends it
    (discord.py parses a body as JSON only on that exact header value)."""
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json"})


def _error(status: int, message: str, code: int = 0) -> web.Response:
    return _json({"message": message, "code": code}, status=status)


EMBED_LIMITS = {"title": 256, "description": 4096, "fields": 25, "field.name": 256,
                "field.value": 1024, "footer.text": 2048, "author.name": 256,
                "total": 6000, "embeds": 10}
"""Discord's embed limits, characters (fields and embeds: counts)."""


def embed_problem(embeds: list[dict[str, Any]]) -> str | None:
    """What in a message's `embeds` (Embed objects as JSON) breaks Discord's embed
    limits, None when nothing does."""
    if len(embeds) > EMBED_LIMITS["embeds"]:
        return f"more than {EMBED_LIMITS['embeds']} embeds"
    total = 0
    for i, e in enumerate(embeds):
        parts = {"title": str(e.get("title") or ""),
                 "description": str(e.get("description") or ""),
                 "footer.text": str((e.get("footer") or {}).get("text") or ""),
                 "author.name": str((e.get("author") or {}).get("name") or "")}
        fields = e.get("fields") or []
        if len(fields) > EMBED_LIMITS["fields"]:
            return f"embeds.{i}.fields: more than {EMBED_LIMITS['fields']}"
        for what, text in parts.items():
            if len(text) > EMBED_LIMITS[what]:
                return f"embeds.{i}.{what}: longer than {EMBED_LIMITS[what]}"
            total += len(text)
        for f in fields:
            for what in ("name", "value"):
                text = str(f.get(what) or "")
                if len(text) > EMBED_LIMITS[f"field.{what}"]:
                    return f"embeds.{i}.fields.{what}: longer than {EMBED_LIMITS['field.' + what]}"
                total += len(text)
    if total > EMBED_LIMITS["total"]:
        return f"embeds: {total} characters in all, more than {EMBED_LIMITS['total']}"
    return None


def _bad_embeds(body: dict[str, Any]) -> web.Response | None:
    problem = embed_problem(body.get("embeds") or [])
    return None if problem is None else _json(
        {"message": "Invalid Form Body", "code": 50035, "errors": {"embeds": {"_errors": [
            {"code": "BASE_TYPE_MAX_LENGTH", "message": problem}]}}}, status=400)


class ApiError(Exception):
    """An API error answer: HTTP `status`, JSON `message` and `code`."""

    def __init__(self, status: int, message: str, code: int) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@web.middleware
async def rate_limit_headers(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """Add `X-RateLimit-*` headers (limit, remaining, reset in Unix s, reset-after in s,
    bucket) to every API response; an `ApiError` becomes its JSON answer."""
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc.status, exc.message, exc.code)
    bucket = hashlib.sha1(request.match_info.route.resource.canonical.encode()
                          if request.match_info.route.resource else b"").hexdigest()[:16]
    response.headers.update({
        "X-RateLimit-Limit": str(RATE_LIMIT), "X-RateLimit-Remaining": str(RATE_LIMIT - 1),
        "X-RateLimit-Reset": f"{time.time() + 1:.3f}", "X-RateLimit-Reset-After": "1.000",
        "X-RateLimit-Bucket": bucket})
    return response


class Rest:
    """The REST handlers over `world`; `gateway_url` is what `/gateway/bot` returns."""

    def __init__(self, world: World, gateway_url: str, dispatch: Dispatch) -> None:
        self.world = world
        self.gateway_url = gateway_url
        self.dispatch = dispatch

    def add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        app.router.add_routes([
            web.get(p + "/gateway", self.gateway),
            web.get(p + "/gateway/bot", self.gateway_bot),
            web.get(p + "/users/@me", self.me),
            web.get(p + "/oauth2/applications/@me", self.application),
            web.get(p + "/applications/@me", self.application),
            web.get(p + "/guilds/{guild}", self.guild),
            web.get(p + "/guilds/{guild}/channels", self.guild_channels),
            web.get(p + "/guilds/{guild}/members/{user}", self.member),
            web.delete(p + "/guilds/{guild}/members/{user}", self.remove_member),
            web.patch(p + "/guilds/{guild}/members/@me", self.modify_me),
            web.get(p + "/channels/{channel}", self.channel),
            web.post(p + "/channels/{channel}/messages", self.create_message),
            web.put(p + "/applications/{app}/commands", self.put_commands),
            web.get(p + "/applications/{app}/commands", self.get_commands),
            web.put(p + "/applications/{app}/guilds/{guild}/commands", self.put_commands),
            web.get(p + "/applications/{app}/guilds/{guild}/commands", self.get_commands),
            web.post(p + "/interactions/{id}/{token}/callback", self.interaction_callback),
            web.post(p + "/webhooks/{app}/{token}", self.followup),
            web.patch(p + "/webhooks/{app}/{token}/messages/{message}", self.edit_followup),
            web.get(p + "/webhooks/{app}/{token}/messages/{message}", self.get_followup),
        ])

    # -- helpers -----------------------------------------------------------------------

    def _auth(self, request: web.Request) -> User:
        """The caller, from `Authorization: Bot <token>`; raises 401 otherwise."""
        self.world.log.append((request.method, request.path))
        user = self.world.by_token(request.headers.get("Authorization", ""))
        if user is None:
            raise ApiError(401, "401: Unauthorized", 0)
        return user

    def _guild(self, request: web.Request) -> None:
        if request.match_info["guild"] != str(self.world.guild_id):
            raise ApiError(404, "Unknown Guild", 10004)

    # -- handlers ------------------------------------------------------------------------

    async def gateway(self, request: web.Request) -> web.Response:
        self.world.log.append((request.method, request.path))
        return _json({"url": self.gateway_url})

    async def gateway_bot(self, request: web.Request) -> web.Response:
        self._auth(request)
        return _json({
            "url": self.gateway_url, "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999,
                                    "reset_after": 86_400_000, "max_concurrency": 1}})

    async def me(self, request: web.Request) -> web.Response:
        return _json(self._auth(request).json())

    async def application(self, request: web.Request) -> web.Response:
        self._auth(request)
        w = self.world
        owner = w.users[0] if w.users else w.bot
        return _json({
            "id": str(w.application_id), "name": w.bot.name, "icon": None,
            "description": "", "summary": "", "bot_public": True,
            "bot_require_code_grant": False, "owner": owner.json(), "team": None,
            "verify_key": "0" * 64, "flags": 0, "bot": w.bot.json(), "rpc_origins": [],
            "interactions_endpoint_url": None, "tags": []})

    async def guild(self, request: web.Request) -> web.Response:
        self._auth(request)
        self._guild(request)
        return _json(self.world.guild_json())

    async def guild_channels(self, request: web.Request) -> web.Response:
        self._auth(request)
        self._guild(request)
        return _json(self.world.channels_json())

    async def member(self, request: web.Request) -> web.Response:
        self._auth(request)
        self._guild(request)
        user = self.world.by_id(int(request.match_info["user"]))
        if user is None or not self.world.is_member(user.id):
            return _error(404, "Unknown Member", 10007)
        return _json(user.member())

    async def remove_member(self, request: web.Request) -> web.Response:
        """Remove Guild Member ("Resources › Guild › Remove Guild Member", needs
        KICK_MEMBERS: the bot or the guild's owner here): 204; the user is no longer a
        member (member lookups 404, their `/users/@me/guilds` lacks the guild)."""
        caller = self._auth(request)
        self._guild(request)
        w = self.world
        if caller is not w.bot and not (w.users and caller is w.users[0]):
            return _error(403, "Missing Permissions", 50013)
        user = w.by_id(int(request.match_info["user"]))
        if user is None or not w.is_member(user.id):
            return _error(404, "Unknown Member", 10007)
        w.removed.add(user.id)
        await self.dispatch("GUILD_MEMBER_REMOVE", {"guild_id": str(w.guild_id),
                                                    "user": user.json()},
                            INTENT_GUILD_MEMBERS)
        return web.Response(status=204)

    async def modify_me(self, request: web.Request) -> web.Response:
        """Modify Current Member: `{"nick": str | null}`; needs CHANGE_NICKNAME."""
        user = self._auth(request)
        self._guild(request)
        body = await request.json()
        if "nick" in body:
            if not self.world.everyone_permissions & CHANGE_NICKNAME:
                return _error(403, "Missing Permissions", 50013)
            user.nick = body["nick"] or None
        member = {**user.member(), "guild_id": str(self.world.guild_id)}
        await self.dispatch("GUILD_MEMBER_UPDATE", member, INTENT_GUILD_MEMBERS, owner=user.id)
        return _json(user.member())

    async def channel(self, request: web.Request) -> web.Response:
        self._auth(request)
        channel = self.world.channel(int(request.match_info["channel"]))
        if channel is None:
            return _error(404, "Unknown Channel", 10003)
        return _json(channel.json(self.world.guild_id))

    async def create_message(self, request: web.Request) -> web.Response:
        user = self._auth(request)
        channel = self.world.channel(int(request.match_info["channel"]))
        if channel is None:
            return _error(404, "Unknown Channel", 10003)
        body = await request.json()
        if (bad := _bad_embeds(body)) is not None:
            return bad
        msg = self.world.message(channel.id, user, body.get("content") or "",
                                 {"embeds": body.get("embeds") or []})
        await self.dispatch("MESSAGE_CREATE", msg, INTENT_GUILD_MESSAGES)
        return _json(msg)

    async def put_commands(self, request: web.Request) -> web.Response:
        """Bulk overwrite: the body is the full list; each command gets an id/version."""
        self._auth(request)
        body = await request.json()
        scope = request.match_info.get("guild", "global")
        stored = [{**c, "id": str(snowflake()), "application_id": str(self.world.application_id),
                   "version": str(snowflake()), "type": c.get("type", 1),
                   "default_member_permissions": c.get("default_member_permissions"),
                   "dm_permission": c.get("dm_permission", True), "nsfw": False,
                   **({"guild_id": scope} if scope != "global" else {})} for c in body]
        self.world.commands[scope] = stored
        return _json(stored)

    async def get_commands(self, request: web.Request) -> web.Response:
        self._auth(request)
        return _json(self.world.commands.get(request.match_info.get("guild",
                                                                                 "global"), []))

    async def interaction_callback(self, request: web.Request) -> web.Response:
        """Create Interaction Response `{"type", "data"}`: type 4 (CHANNEL_MESSAGE_WITH_
        SOURCE) creates the `@original` message; type 5 (DEFERRED_CHANNEL_MESSAGE_WITH_
        SOURCE) a loading one (flag 128) that the first follow-up fills. 204, or with
        `?with_response=true` 200 and an interaction callback response `{interaction: {id,
        type, response_message_id, response_message_loading, response_message_ephemeral},
        resource: {type, message}}`."""
        self.world.log.append((request.method, request.path))
        body = await request.json()
        token, kind = request.match_info["token"], body.get("type")
        data = body.get("data") or {}
        if (bad := _bad_embeds(data)) is not None:
            return bad
        self.world.interaction_responses.append(
            {"interaction_id": request.match_info["id"], "token": token, **body})
        msg = None
        if kind in (4, 5):
            flags = int(data.get("flags") or 0) | (128 if kind == 5 else 0)
            msg = self.world.message(self.world.text.id, self.world.bot,
                                     data.get("content") or "",
                                     {"embeds": data.get("embeds") or [], "flags": flags,
                                      "interaction_token": token})
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        return _json({
            "interaction": {"id": request.match_info["id"], "type": 2,
                            "activity_instance_id": None,
                            "response_message_id": msg["id"] if msg else None,
                            "response_message_loading": kind == 5,
                            "response_message_ephemeral": bool(msg and msg["flags"] & 64)},
            "resource": {"type": kind, **({"message": msg} if msg else {})}})

    async def followup(self, request: web.Request) -> web.Response:
        """Create Followup Message; the first one after a deferral fills the loading
        `@original` message."""
        self.world.log.append((request.method, request.path))
        body = await request.json()
        if (bad := _bad_embeds(body)) is not None:
            return bad
        token = request.match_info["token"]
        fields: dict[str, Any] = {"content": str(body.get("content") or ""),
                                  "embeds": body.get("embeds") or []}
        loading = [m for m in self.world.messages
                   if m.get("interaction_token") == token and m["flags"] & 128]
        if loading:
            loading[0].update(fields, flags=loading[0]["flags"] & ~128)
            return _json(loading[0])
        msg = self.world.message(self.world.text.id, self.world.bot, fields["content"],
                                 {"embeds": fields["embeds"],
                                  "webhook_id": request.match_info["app"],
                                  "flags": body.get("flags", 0), "interaction_token": token})
        return _json(msg)

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        token, ref = request.match_info["token"], request.match_info["message"]
        found = [m for m in self.world.messages if m.get("interaction_token") == token
                 and (ref == "@original" or m["id"] == ref)]
        return found[0] if found else None

    async def edit_followup(self, request: web.Request) -> web.Response:
        self.world.log.append((request.method, request.path))
        body = await request.json()
        if (bad := _bad_embeds(body)) is not None:
            return bad
        msg = self._find(request)
        if msg is None:  # editing @original of a deferred response creates it
            msg = self.world.message(self.world.text.id, self.world.bot, "",
                                     {"interaction_token": request.match_info["token"]})
        msg.update({k: v for k, v in body.items() if k in ("content", "embeds", "components")})
        return _json(msg)

    async def get_followup(self, request: web.Request) -> web.Response:
        self.world.log.append((request.method, request.path))
        msg = self._find(request)
        return _json(msg) if msg else _error(404, "Unknown Message", 10008)
