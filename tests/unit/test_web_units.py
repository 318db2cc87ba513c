"""Pure parts of the web component: the permission rule of a partial guild (Discord docs,
"Topics › Permissions": ADMINISTRATOR 0x8, MANAGE_GUILD 0x20; owners have every
permission), the authorize URL (Discord docs "Topics › OAuth2"), settings checks, the
cookie's token box, the logged-out sessions and the zip bundle slots."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from voicetrack.manifests import LiveManifest
from voicetrack_web.access import meeting_root
from voicetrack_web.bundles import BundleSlots
from voicetrack_web.discord import DiscordOAuth, display_name, guild_access
from voicetrack_web.downloads import live_version
from voicetrack_web.sessions import RevokedSessions, TokenBox
from voicetrack_web.settings import WebSettings

pytestmark = pytest.mark.unit

ENV = {
    "VOICETRACK_DATABASE_URL": "sqlite+aiosqlite:///x.db",
    "VOICETRACK_S3_ENDPOINT": "http://127.0.0.1:8333",
    "VOICETRACK_S3_ACCESS_KEY": "a", "VOICETRACK_S3_SECRET_KEY": "b",
    "VOICETRACK_DISCORD_CLIENT_ID": "123456789012345678",
    "VOICETRACK_DISCORD_CLIENT_SECRET": "s",
    "VOICETRACK_WEB_SECRET_KEY": "k" * 32,
    "VOICETRACK_WEB_BASE_URL": "https://vt.example.com/",
}


@pytest.mark.parametrize(("partial", "manager"), [
    ({"permissions": str(0x20)}, True),
    ({"permissions": str(0x8)}, True),
    ({"permissions": str(0x20 | 0x400)}, True),
    ({"permissions": str(0x400 | 0x800 | 0x100000)}, False),
    ({"permissions": "0", "owner": True}, True),
    ({"permissions": str(1 << 40)}, False),
    ({}, False),
])
def test_manager_is_owner_manage_server_or_administrator(partial: dict[str, object],
                                                         manager: bool) -> None:
    access = guild_access({"id": "300000000000000001", "name": "g", **partial})
    assert access.manager is manager and access.id == "300000000000000001"


def test_settings_and_authorize_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    settings = WebSettings.from_env()
    assert settings.redirect_uri == "https://vt.example.com/auth/callback"
    assert settings.secure_cookies and settings.link_seconds == 900
    url = urlsplit(DiscordOAuth(settings).authorize_url("st4te"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://discord.com/oauth2/authorize"
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert q == {"response_type": "code", "client_id": "123456789012345678",
                 "scope": "identify guilds", "state": "st4te", "prompt": "none",
                 "redirect_uri": "https://vt.example.com/auth/callback"}


@pytest.mark.parametrize(("name", "value", "message"), [
    ("VOICETRACK_WEB_SECRET_KEY", "short", "at least 32"),
    ("VOICETRACK_WEB_BASE_URL", "vt.example.com", "not an http"),
    ("VOICETRACK_WEB_LINK_SECONDS", "700000", "not in 1..604800"),
    ("VOICETRACK_DISCORD_CLIENT_ID", "", "VOICETRACK_DISCORD_CLIENT_ID"),
])
def test_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                message: str) -> None:
    for k, v in {**ENV, name: value}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RuntimeError, match=message):
        WebSettings.from_env()


def test_new_settings_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    settings = WebSettings.from_env()
    assert settings.bot_token is None and settings.guild_refresh_s == 300
    monkeypatch.setenv("VOICETRACK_DISCORD_BOT_TOKEN", "tok")
    monkeypatch.setenv("VOICETRACK_WEB_GUILD_REFRESH_SECONDS", "7")
    monkeypatch.setenv("VOICETRACK_WEB_NAMES_TTL_SECONDS", "0")
    settings = WebSettings.from_env()
    assert (settings.bot_token, settings.guild_refresh_s, settings.names_ttl_s) == ("tok", 7, 0)
    monkeypatch.setenv("VOICETRACK_WEB_GUILD_REFRESH_SECONDS", "0")
    with pytest.raises(RuntimeError, match="VOICETRACK_WEB_GUILD_REFRESH_SECONDS: 0"):
        WebSettings.from_env()
    monkeypatch.setenv("VOICETRACK_WEB_GUILD_REFRESH_SECONDS", "soon")
    with pytest.raises(RuntimeError, match="VOICETRACK_WEB_GUILD_REFRESH_SECONDS: 'soon'"):
        WebSettings.from_env()


def test_guild_limit_and_bundle_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    settings = WebSettings.from_env()
    assert (settings.guild_limit_s, settings.max_bundles) == (600, 2)  # 2 × 300 s
    monkeypatch.setenv("VOICETRACK_WEB_GUILD_REFRESH_SECONDS", "60")
    monkeypatch.setenv("VOICETRACK_WEB_GUILD_MAX_AGE_SECONDS", "90")
    monkeypatch.setenv("VOICETRACK_WEB_MAX_BUNDLES", "1")
    settings = WebSettings.from_env()
    assert (settings.guild_limit_s, settings.max_bundles) == (90, 1)
    monkeypatch.setenv("VOICETRACK_WEB_GUILD_MAX_AGE_SECONDS", "30")
    with pytest.raises(RuntimeError, match="MAX_AGE_SECONDS: 30 is below the refresh"):
        WebSettings.from_env()
    monkeypatch.setenv("VOICETRACK_WEB_GUILD_MAX_AGE_SECONDS", "0")
    monkeypatch.setenv("VOICETRACK_WEB_MAX_BUNDLES", "0")
    with pytest.raises(RuntimeError, match="VOICETRACK_WEB_MAX_BUNDLES: 0 is below 1"):
        WebSettings.from_env()


def test_token_box_seals_and_refuses_other_keys() -> None:
    box = TokenBox("k" * 32)
    sealed = box.seal("the-access-token")
    assert "the-access-token" not in sealed and box.open(sealed) == "the-access-token"
    assert TokenBox("j" * 32).open(sealed) is None
    assert box.open(sealed[:-4] + "AAAA") is None and box.open(None) is None


def test_revoked_sessions_expire_with_the_cookie() -> None:
    revoked = RevokedSessions(ttl_s=100)
    revoked.revoke("a", now=0)
    assert revoked.revoked("a", now=99) and not revoked.revoked("b", now=1)
    assert not revoked.revoked("a", now=100)
    revoked.revoke("b", now=200)  # prunes "a"
    assert set(revoked._until) == {"b"}


def test_bundle_slots_one_per_user_and_a_limit() -> None:
    slots = BundleSlots(2)
    a = slots.take("alice")
    assert a is not None and slots.take("alice") is None
    b = slots.take("bob")
    assert b is not None and slots.take("carol") is None and slots.held == 2
    a.release()
    a.release()  # again: no effect
    assert slots.held == 1 and slots.take("alice") is not None


@pytest.mark.parametrize(("member", "name"), [
    ({"nick": "Nick", "user": {"global_name": "Global", "username": "user"}}, "Nick"),
    ({"nick": None, "user": {"global_name": "Global", "username": "user"}}, "Global"),
    ({"nick": "", "user": {"global_name": None, "username": "user"}}, "user"),
    ({"user": {}}, None),
])
def test_display_name_is_nick_then_global_then_username(member: dict[str, object],
                                                        name: str | None) -> None:
    assert display_name(member) == name


@pytest.mark.parametrize(("key", "root"), [
    ("recordings/300000000000000001/abcdEFGH12345678/chunks/000000/1.pcm",
     "recordings/300000000000000001/abcdEFGH12345678"),
    ("300000000000000001/abcdEFGH12345678/final/mix.mp3",
     "300000000000000001/abcdEFGH12345678"),
    ("a/b/x300000000000000001/abcdEFGH12345678/final/mix.mp3", None),
    ("elsewhere/mix.mp3", None),
    (None, None),
])
def test_meeting_root_from_an_object_key(key: str | None, root: str | None) -> None:
    assert meeting_root(key, "300000000000000001", "abcdEFGH12345678") == root


def _live(ms: int, size: int = 1, **check: str) -> LiveManifest:
    return LiveManifest.model_validate({
        "toolVersion": "t", "meetingId": "abcdEFGH12345678", "durationMs": ms,
        "recordedMs": ms, "pausedMs": 0, "tracks": [{
            "track": "mix", "kind": "mixed", "format": "mp3", "key": "k/live/mix.mp3",
            "bytes": size, "durationMs": ms, **check}]})


def test_live_version_changes_with_any_track() -> None:
    """A live track has an ETag and no sha256: the version follows the ETag and size
    (before, it hashed the sha256, None for every live track now, so a track rewritten
    at the same length kept the version); a manifest from before ETags, its sha256."""
    a = live_version(_live(5000, etag="e1-3"))
    assert a == live_version(_live(5000, etag="e1-3"))
    assert a != live_version(_live(5000, etag="e2-3"))
    assert a != live_version(_live(5000, 2, etag="e1-3"))
    assert a != live_version(_live(10000, etag="e1-3"))
    old = live_version(_live(5000, sha256="a" * 64))
    assert old == live_version(_live(5000, sha256="a" * 64))
    assert old != live_version(_live(5000, sha256="b" * 64))
