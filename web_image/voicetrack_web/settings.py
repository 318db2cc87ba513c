"""The web component's settings, from `VOICETRACK_*` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from voicetrack.db.engine import DATABASE_URL_ENV
from voicetrack.objectstore import DEFAULT_LINK_S, MAX_PRESIGN_S, S3Settings

DISCORD_API_BASE = "https://discord.com/api/v10"
"""Discord's REST base (Discord docs, "Reference › API Versioning")."""
DISCORD_AUTHORIZE_URL = "https://discord.com/oauth2/authorize"
"""Discord's authorization URL (Discord docs, "Topics › OAuth2 › Shared Resources")."""
SESSION_MAX_AGE_S = 8 * 3600
"""Default lifetime (s) of the log-in cookie."""
GUILD_REFRESH_S = 300
"""Default age (s) after which the user's guild list is read from Discord again."""
GUILD_MAX_AGE_FACTOR = 2
"""Default hard age limit of the guild list, in guild refresh intervals."""
NAMES_TTL_S = 600
"""Default time (s) a looked-up member display name is kept."""
MAX_BUNDLES = 2
"""Default number of zip bundles one process holds at once (built or being sent)."""


@dataclass(frozen=True)
class WebSettings:
    """Everything the web process needs.

    `base_url` is the page's public origin (`https://voicetrack.example.com`, no trailing
    slash); the OAuth2 redirect URI is `<base_url>/auth/callback` and must be registered
    with the Discord application. `secret_key` signs the session cookie (itsdangerous).
    `discord_ca_bundle` is a PEM file to trust for Discord's TLS (the local Discord's CA);
    None uses the system store. `session_max_age_s` and `link_seconds` are seconds.
    `bot_token` (optional) lets the page show members' guild display names; without it
    speakers show as user ids. `guild_refresh_s`: the user's guild list and Manage Server
    rights are read again from Discord when older; `guild_max_age_s`: past this age (s) a
    list Discord did not renew (429, 5xx, unreachable) ends the session (0: twice
    `guild_refresh_s`); `names_ttl_s`: how long a looked-up display name is kept (s).
    `max_bundles`: zip bundles held at once by the process (each from its build until
    its response is sent; more are answered 429)."""

    database_url: str
    s3: S3Settings
    client_id: str
    client_secret: str
    secret_key: str
    base_url: str
    discord_api_base: str = DISCORD_API_BASE
    discord_authorize_url: str = DISCORD_AUTHORIZE_URL
    discord_ca_bundle: str | None = None
    session_max_age_s: int = SESSION_MAX_AGE_S
    link_seconds: int = DEFAULT_LINK_S
    bot_token: str | None = None
    guild_refresh_s: int = GUILD_REFRESH_S
    guild_max_age_s: int = 0
    names_ttl_s: int = NAMES_TTL_S
    max_bundles: int = MAX_BUNDLES

    @property
    def guild_limit_s(self) -> int:
        """The hard age limit (s) of a session's guild list: `guild_max_age_s`, else
        GUILD_MAX_AGE_FACTOR refresh intervals."""
        return self.guild_max_age_s or GUILD_MAX_AGE_FACTOR * self.guild_refresh_s

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url}/auth/callback"

    @property
    def secure_cookies(self) -> bool:
        """Cookies carry `Secure` when the page is served over https."""
        return urlsplit(self.base_url).scheme == "https"

    @classmethod
    def from_env(cls) -> WebSettings:
        """Read VOICETRACK_DATABASE_URL, the VOICETRACK_S3_* variables
        (`S3Settings.from_env`), VOICETRACK_DISCORD_CLIENT_ID, VOICETRACK_DISCORD_CLIENT_SECRET,
        VOICETRACK_WEB_SECRET_KEY (at least 32 characters), VOICETRACK_WEB_BASE_URL and the
        optional VOICETRACK_DISCORD_API_BASE, VOICETRACK_DISCORD_AUTHORIZE_URL,
        VOICETRACK_DISCORD_CA_BUNDLE, VOICETRACK_WEB_SESSION_MAX_AGE (s),
        VOICETRACK_WEB_LINK_SECONDS (s, 1..604800), VOICETRACK_DISCORD_BOT_TOKEN,
        VOICETRACK_WEB_GUILD_REFRESH_SECONDS (s, >= 1),
        VOICETRACK_WEB_GUILD_MAX_AGE_SECONDS (s, 0 or >= the refresh interval; 0: twice
        it), VOICETRACK_WEB_NAMES_TTL_SECONDS (s, >= 0), VOICETRACK_WEB_MAX_BUNDLES (>= 1).
        Raises RuntimeError naming every missing or bad variable."""
        env = os.environ
        required = (DATABASE_URL_ENV, "VOICETRACK_DISCORD_CLIENT_ID",
                    "VOICETRACK_DISCORD_CLIENT_SECRET", "VOICETRACK_WEB_SECRET_KEY",
                    "VOICETRACK_WEB_BASE_URL")
        missing = [n for n in required if not env.get(n)]
        if missing:
            raise RuntimeError(f"missing environment variable(s): {', '.join(missing)}")
        if len(env["VOICETRACK_WEB_SECRET_KEY"]) < 32:
            raise RuntimeError("VOICETRACK_WEB_SECRET_KEY: use at least 32 random characters")
        base = env["VOICETRACK_WEB_BASE_URL"].rstrip("/")
        if urlsplit(base).scheme not in ("http", "https"):
            raise RuntimeError(f"VOICETRACK_WEB_BASE_URL: {base!r} is not an http(s) URL")
        link_s = int(env.get("VOICETRACK_WEB_LINK_SECONDS", DEFAULT_LINK_S))
        if not 1 <= link_s <= MAX_PRESIGN_S:
            raise RuntimeError(f"VOICETRACK_WEB_LINK_SECONDS: {link_s} not in 1..{MAX_PRESIGN_S}")
        refresh_s = _int_env("VOICETRACK_WEB_GUILD_REFRESH_SECONDS", GUILD_REFRESH_S, 1)
        names_s = _int_env("VOICETRACK_WEB_NAMES_TTL_SECONDS", NAMES_TTL_S, 0)
        max_age_s = _int_env("VOICETRACK_WEB_GUILD_MAX_AGE_SECONDS", 0, 0)
        if 0 < max_age_s < refresh_s:
            raise RuntimeError(f"VOICETRACK_WEB_GUILD_MAX_AGE_SECONDS: {max_age_s} is below "
                               f"the refresh interval ({refresh_s})")
        bundles = _int_env("VOICETRACK_WEB_MAX_BUNDLES", MAX_BUNDLES, 1)
        return cls(
            database_url=env[DATABASE_URL_ENV],
            s3=S3Settings.from_env(),
            client_id=env["VOICETRACK_DISCORD_CLIENT_ID"],
            client_secret=env["VOICETRACK_DISCORD_CLIENT_SECRET"],
            secret_key=env["VOICETRACK_WEB_SECRET_KEY"],
            base_url=base,
            discord_api_base=env.get("VOICETRACK_DISCORD_API_BASE", DISCORD_API_BASE).rstrip("/"),
            discord_authorize_url=env.get("VOICETRACK_DISCORD_AUTHORIZE_URL",
                                          DISCORD_AUTHORIZE_URL),
            discord_ca_bundle=env.get("VOICETRACK_DISCORD_CA_BUNDLE") or None,
            session_max_age_s=int(env.get("VOICETRACK_WEB_SESSION_MAX_AGE", SESSION_MAX_AGE_S)),
            link_seconds=link_s,
            bot_token=env.get("VOICETRACK_DISCORD_BOT_TOKEN") or None,
            guild_refresh_s=refresh_s,
            guild_max_age_s=max_age_s,
            names_ttl_s=names_s,
            max_bundles=bundles,
        )


def _int_env(name: str, default: int, minimum: int) -> int:
    """`name` as an integer >= `minimum`, `default` when unset. RuntimeError naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeError(f"{name}: {raw!r} is not a whole number") from None
    if value < minimum:
        raise RuntimeError(f"{name}: {value} is below {minimum}")
    return value
