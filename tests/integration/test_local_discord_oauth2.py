"""The local Discord's OAuth2 provider (`voicetrack_local.discord.oauth2`), over its real TLS
port: the authorization-code grant as Discord documents it ("Topics › OAuth2") and the
refusals of RFC 6749 (§4.1.2.1 no redirect for a bad client, §5.2 error codes, single-use
codes, the redirect URI bound to the code), and the Bearer user endpoints."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from voicetrack_local.discord import launcher

pytestmark = pytest.mark.integration

REDIRECT = "http://127.0.0.1:9/auth/callback"


@pytest.fixture
def info(tmp_path: Path) -> Iterator[dict[str, Any]]:
    state = tmp_path / "discord"
    doc = json.loads(launcher.up(state).read_text())
    try:
        yield doc
    finally:
        launcher.down(state)


def authorize(http: httpx.Client, info: dict[str, Any], user: str, **extra: str
              ) -> httpx.Response:
    origin = info["api_base"].rsplit("/api/", 1)[0]
    params = {"response_type": "code", "client_id": info["oauth2"]["client_id"],
              "scope": "identify guilds", "redirect_uri": REDIRECT, "state": "s1",
              "login_hint": user, **extra}
    return http.get(origin + "/oauth2/authorize", params=params)


def test_code_grant_and_its_refusals(info: dict[str, Any]) -> None:
    api = info["api_base"]
    oauth = info["oauth2"]
    client = (oauth["client_id"], oauth["client_secret"])
    with httpx.Client(verify=ssl.create_default_context(cafile=info["ca_bundle"]),
                      follow_redirects=False) as http:
        form = authorize(http, info, "", login_hint="")
        assert form.status_code == 200 and "<select id=user" in form.text
        assert authorize(http, info, "bob", client_id="1").status_code == 400
        assert authorize(http, info, "bob", scope="identify admin").status_code == 400

        resp = authorize(http, info, "bob")
        assert resp.status_code == 302
        loc = urlsplit(resp.headers["location"])
        assert f"{loc.scheme}://{loc.netloc}{loc.path}" == REDIRECT
        q = {k: v[0] for k, v in parse_qs(loc.query).items()}
        assert q["state"] == "s1"
        code = q["code"]

        def token(c: str, redirect: str = REDIRECT, auth: tuple[str, str] = client
                  ) -> httpx.Response:
            return http.post(f"{api}/oauth2/token", auth=auth, data={
                "grant_type": "authorization_code", "code": c, "redirect_uri": redirect})

        assert token(code, auth=(oauth["client_id"], "wrong")).json() == {
            "error": "invalid_client"}
        bad_redirect = token(code, redirect="http://127.0.0.1:9/elsewhere")
        assert bad_redirect.status_code == 400
        assert bad_redirect.json()["error"] == "invalid_grant"
        # that attempt used the code up (single use)
        assert token(code).json()["error"] == "invalid_grant"

        code = parse_qs(urlsplit(authorize(http, info, "bob").headers["location"]).query)[
            "code"][0]
        answer = token(code).json()
        assert answer["token_type"] == "Bearer" and answer["scope"] == "guilds identify"
        bearer = {"Authorization": f"Bearer {answer['access_token']}"}
        me = http.get(f"{api}/users/@me", headers=bearer).json()
        bob = next(u for u in info["users"] if u["name"] == "bob")
        assert me["id"] == bob["id"] and me["username"] == "bob"
        guilds = http.get(f"{api}/users/@me/guilds", headers=bearer).json()
        assert [g["id"] for g in guilds] == [info["guild_id"]]
        assert guilds[0]["owner"] is False and int(guilds[0]["permissions"]) & 0x28 == 0
        assert http.get(f"{api}/users/@me/guilds",
                        headers={"Authorization": "Bearer nope"}).status_code == 401
        # the bot's own token still works on /users/@me
        bot = http.get(f"{api}/users/@me",
                       headers={"Authorization": f"Bot {info['bot_token']}"}).json()
        assert bot["bot"] is True

        # identify only: /users/@me/guilds is refused
        loc2 = authorize(http, info, "alice", scope="identify").headers["location"]
        code = parse_qs(urlsplit(loc2).query)["code"][0]
        narrow = {"Authorization": f"Bearer {token(code).json()['access_token']}"}
        assert http.get(f"{api}/users/@me/guilds", headers=narrow).status_code == 403

        # the owner has every permission; the outsider is in the other guild only
        for name, guild, owner in (("alice", info["guild_id"], True),
                                   (oauth["outsiders"][0]["name"],
                                    oauth["outsider_guild_id"], True)):
            c = parse_qs(urlsplit(authorize(http, info, name).headers["location"]).query)[
                "code"][0]
            h = {"Authorization": f"Bearer {token(c).json()['access_token']}"}
            gs = http.get(f"{api}/users/@me/guilds", headers=h).json()
            assert [(g["id"], g["owner"]) for g in gs] == [(guild, owner)]
            assert int(gs[0]["permissions"]) & 0x20
