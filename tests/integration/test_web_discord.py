"""The web page's Discord reads against the real local Discord (its TLS port): speakers'
display names through `GET /guilds/{g}/members/{u}` with the bot token, cached with a TTL
(`voicetrack_web.members.MemberNames`), the id when there is no token or no member; and
the guild-list refresh (`DiscordOAuth.guilds`) after Remove Guild Member and after the
access token is revoked (RFC 7009)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from voicetrack.objectstore import S3Settings
from voicetrack_local.discord import launcher
from voicetrack_web.discord import DiscordOAuth, TokenRefused
from voicetrack_web.members import MemberNames
from voicetrack_web.settings import WebSettings

pytestmark = pytest.mark.integration

REDIRECT = "http://127.0.0.1:9/auth/callback"
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def info(tmp_path: Path) -> Iterator[dict[str, Any]]:
    state = tmp_path / "discord"
    doc = json.loads(launcher.up(state).read_text())
    try:
        yield doc
    finally:
        launcher.down(state)


def settings(info: dict[str, Any], bot_token: str | None) -> WebSettings:
    return WebSettings(
        database_url="sqlite+aiosqlite:///unused.db",
        s3=S3Settings("http://127.0.0.1:9", "a", "b"),
        client_id=info["oauth2"]["client_id"], client_secret=info["oauth2"]["client_secret"],
        secret_key="k" * 32, base_url="http://127.0.0.1:9",
        discord_api_base=info["api_base"], discord_ca_bundle=info["ca_bundle"],
        bot_token=bot_token)


def http(info: dict[str, Any]) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=info["ca_bundle"]),
                        follow_redirects=False)


def access_token(info: dict[str, Any], user: str) -> str:
    """The authorization-code grant for `user` (as the page's log-in does)."""
    origin = info["api_base"].rsplit("/api/", 1)[0]
    oauth = info["oauth2"]
    with http(info) as h:
        resp = h.get(origin + "/oauth2/authorize", params={
            "response_type": "code", "client_id": oauth["client_id"],
            "scope": "identify guilds", "redirect_uri": REDIRECT, "login_hint": user})
        code = parse_qs(urlsplit(resp.headers["location"]).query)["code"][0]
        token = h.post(info["api_base"] + "/oauth2/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
            auth=(oauth["client_id"], oauth["client_secret"]))
        return str(token.json()["access_token"])


async def test_names_cached_with_a_ttl_and_ids_without_a_token(info: dict[str, Any]) -> None:
    guild = info["guild_id"]
    users = {u["name"]: u for u in info["users"]}
    alice, bob = users["alice"]["id"], users["bob"]["id"]
    now = [0.0]
    discord = DiscordOAuth(settings(info, info["bot_token"]))
    names = MemberNames(discord, ttl_s=60, clock=lambda: now[0])
    try:
        assert await names.names(guild, [alice, bob, "1"]) == {
            alice: "alice", bob: "bob", "1": "1"}
        with http(info) as h:  # bob's own token: Modify Current Member
            r = h.patch(f"{info['api_base']}/guilds/{guild}/members/@me",
                        headers={"Authorization": f"Bot {users['bob']['token']}"},
                        json={"nick": HOSTILE})
            assert r.status_code == 200
        now[0] = 59.0
        assert (await names.names(guild, [bob]))[bob] == "bob"  # still cached
        now[0] = 61.0
        assert (await names.names(guild, [bob]))[bob] == HOSTILE  # read again, as is
        assert (await names.names("999999999999999999", [bob]))[bob] == bob  # no such guild
    finally:
        await discord.close()
    tokenless = DiscordOAuth(settings(info, None))
    try:
        assert await MemberNames(tokenless, 60).names(guild, [alice]) == {alice: alice}
    finally:
        await tokenless.close()


async def test_guild_list_after_removal_and_revocation(info: dict[str, Any]) -> None:
    guild = info["guild_id"]
    users = {u["name"]: u for u in info["users"]}
    oauth = info["oauth2"]
    discord = DiscordOAuth(settings(info, info["bot_token"]))
    try:
        carol, bob = access_token(info, "carol"), access_token(info, "bob")
        assert [g.id for g in await discord.guilds(carol)] == [guild]
        with http(info) as h:
            r = h.delete(f"{info['api_base']}/guilds/{guild}/members/{users['carol']['id']}",
                         headers={"Authorization": f"Bot {users['bob']['token']}"})
            assert r.status_code == 403  # bob may not kick
            r = h.delete(f"{info['api_base']}/guilds/{guild}/members/{users['carol']['id']}",
                         headers={"Authorization": f"Bot {info['bot_token']}"})
            assert r.status_code == 204
        assert await discord.guilds(carol) == []
        assert await discord.member_name(guild, users["carol"]["id"]) is None
        assert [g.id for g in await discord.guilds(bob)] == [guild]
        with http(info) as h:
            r = h.post(f"{info['api_base']}/oauth2/token/revoke", data={"token": bob},
                       auth=(oauth["client_id"], "wrong"))
            assert r.status_code == 401
            r = h.post(f"{info['api_base']}/oauth2/token/revoke", data={"token": bob},
                       auth=(oauth["client_id"], oauth["client_secret"]))
            assert r.status_code == 200
        with pytest.raises(TokenRefused):
            await discord.guilds(bob)
    finally:
        await discord.close()
