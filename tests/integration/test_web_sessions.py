"""The web page's log-in against the real local Discord (OAuth2 code grant, its TLS port)
and a SQLite database: the guild list fails closed once Discord has not renewed it for
`guild_limit_s` (unreachable, or 429 with a `Retry-After` that is honoured), the cookie
carries no usable Discord token, `/auth/login` does not end a session, log-out refuses a
copy of the old cookie and revokes the token; and a peaks key in the final manifest
outside the meeting's `final/` is refused (SeaweedFS)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from voicetrack.db.migrate import upgrade_head
from voicetrack.db.service import RecordingService
from voicetrack.manifests import FinalManifest, FinalTrack
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.discord import launcher
from voicetrack_web.app import SESSION_COOKIE, create_app
from voicetrack_web.settings import WebSettings

pytestmark = pytest.mark.integration

MEETING, OTHER = "5e55104000000001", "5e55104000000002"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SECRET = "s" * 40


@dataclasses.dataclass
class Local:
    info: dict[str, Any]
    state: Path
    db_url: str

    @property
    def guild(self) -> str:
        return str(self.info["guild_id"])

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.info["ca_bundle"])

    def settings(self, s3: S3Settings | None = None, **kw: Any) -> WebSettings:
        origin = self.info["api_base"].rsplit("/api/", 1)[0]
        oauth = self.info["oauth2"]
        return WebSettings(
            database_url=self.db_url, s3=s3 or S3Settings("http://127.0.0.1:9", "a", "b"),
            client_id=oauth["client_id"], client_secret=oauth["client_secret"],
            secret_key=SECRET, base_url="http://testserver",
            discord_api_base=self.info["api_base"],
            discord_authorize_url=origin + oauth["authorize_path"],
            discord_ca_bundle=self.info["ca_bundle"], **kw)

    def bearer_works(self, token: str) -> bool:
        """Whether the local Discord accepts `token` as a user's Bearer token."""
        with httpx.Client(verify=self.tls()) as h:
            return h.get(self.info["api_base"] + "/users/@me",
                         headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    """The local Discord and a database with one meeting in its guild."""
    state = tmp_path / "discord"
    info = json.loads(launcher.up(state).read_text())
    db_url = f"sqlite+aiosqlite:///{tmp_path}/web.db"
    upgrade_head(db_url)

    async def seed() -> None:
        svc = RecordingService.from_url(db_url)
        try:
            await svc.create_meeting(MEETING, str(info["guild_id"]), "1" * 18, T0, "uid-m")
        finally:
            await svc.close()

    asyncio.run(seed())
    try:
        yield Local(info, state, db_url)
    finally:
        launcher.down(state)


def log_in(client: TestClient, local: Local, user: str = "alice") -> float:
    """The page's log-in through the local Discord's authorize endpoint; its time (s)."""
    start = client.get("/auth/login")
    assert start.status_code == 303, start.text
    with httpx.Client(verify=local.tls(), follow_redirects=False) as h:
        consent = h.get(f"{start.headers['location']}&login_hint={user}")
    back = urlsplit(consent.headers["location"])
    at = time.time()
    done = client.get(f"{back.path}?{back.query}")
    assert done.status_code == 303 and done.headers["location"] == "/", done.text
    return at


def payload(client: TestClient) -> dict[str, Any]:
    """The session cookie's JSON (signed, not encrypted: anyone holding it reads it)."""
    raw = client.cookies[SESSION_COOKIE].split(".")[0]
    doc: dict[str, Any] = json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    return doc


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def test_unreachable_discord_ends_the_session_past_the_limit(local: Local) -> None:
    app = create_app(local.settings(guild_refresh_s=1))  # limit: 2 refreshes = 2 s
    url = f"/api/guilds/{local.guild}/meetings"
    with TestClient(app, follow_redirects=False) as c:
        t0 = log_in(c, local)
        assert c.get(url).status_code == 200
        launcher.down(local.state)  # Discord goes away
        sleep_until(t0 + 1.2)
        assert c.get(url).status_code == 200  # stale, younger than the limit: kept
        sleep_until(t0 + 2.2)
        r = c.get(url)
        assert r.status_code == 401, (r.status_code, r.text)
        assert c.get(f"/guilds/{local.guild}").headers["location"] == "/"  # session gone


class RateLimiter(BaseHTTPRequestHandler):
    """Discord's answer to an exhausted bucket: 429 with Retry-After (s) and JSON."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        RateLimiter.hits.append(self.path)
        body = json.dumps({"message": "You are being rate limited.", "retry_after": 30.0,
                           "global": False}).encode()
        self.send_response(429)
        self.send_header("Retry-After", "30")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_rate_limited_refresh_honours_retry_after_within_the_limit(local: Local) -> None:
    settings = local.settings(guild_refresh_s=1)  # limit 2 s
    app = create_app(settings)
    url = f"/api/guilds/{local.guild}/meetings"
    server = ThreadingHTTPServer(("127.0.0.1", 0), RateLimiter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    RateLimiter.hits = []
    try:
        with TestClient(app, follow_redirects=False) as c:
            t0 = log_in(c, local)
            # from now on Discord rate-limits this user's token (they burnt it themselves)
            app.state.voicetrack.discord.settings = dataclasses.replace(
                settings, discord_api_base=f"http://127.0.0.1:{server.server_port}/api/v10")
            sleep_until(t0 + 1.2)
            assert c.get(url).status_code == 200  # refused, list younger than the limit
            assert len(RateLimiter.hits) == 1
            assert c.get(url).status_code == 200
            assert len(RateLimiter.hits) == 1, "asked again inside Retry-After"
            sleep_until(t0 + 2.2)
            r = c.get(url)
            assert r.status_code == 401, (r.status_code, r.text)  # never past the limit
            assert len(RateLimiter.hits) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_cookie_holds_no_usable_token(local: Local) -> None:
    with TestClient(create_app(local.settings()), follow_redirects=False) as c:
        log_in(c, local)
        doc = payload(c)
    usable = [v for v in strings(doc) if len(v) >= 20 and local.bearer_works(v)]
    assert usable == [], f"the cookie carries a working Discord token: {list(doc)}"


def test_login_link_keeps_and_logout_ends_the_session(local: Local) -> None:
    app = create_app(local.settings())
    url = f"/api/guilds/{local.guild}/meetings"
    with TestClient(app, follow_redirects=False) as c:
        log_in(c, local)
        # a link from anywhere to /auth/login does not log the user out
        assert c.get("/auth/login").status_code == 303
        assert c.get(url).status_code == 200
        old = c.cookies[SESSION_COOKIE]
        doc = payload(c)
        assert c.post("/auth/logout", data={"csrf_token": doc["csrf"]}).status_code == 303
        assert c.get(url).status_code == 401
        c.cookies.clear()
        c.cookies.set(SESSION_COOKIE, old)  # the cookie copied before log-out
        r = c.get(url)
        assert r.status_code == 401, (r.status_code, r.text)
        page = c.get(f"/guilds/{local.guild}")
        assert (page.status_code, page.headers["location"]) == (303, "/")

    from voicetrack_web.sessions import TokenBox  # the token the cookie sealed: revoked
    token = TokenBox(SECRET).open(doc["tok"])
    assert token and not local.bearer_works(token)


def _final(layout_root: str, peaks_key: str) -> FinalManifest:
    track = FinalTrack(track="mix", kind="mixed", format="mp3",
                       key=f"{layout_root}/final/mix.mp3", bytes=3, sha256="c" * 64,
                       duration_ms=2000, peaks_key=peaks_key)
    return FinalManifest(tool_version="t", meeting_id=MEETING, duration_ms=2000,
                         recorded_ms=2000, paused_ms=0, tracks=[track])


def test_peaks_key_outside_the_meeting_is_refused(local: Local,
                                                  object_store: ObjectStore) -> None:
    root = f"recordings/{local.guild}/{MEETING}"
    foreign = f"recordings/{local.guild}/{OTHER}/final/waveform-mix.json"
    own = f"{root}/final/waveform-mix.json"
    manifest = _final(root, foreign)

    async def promote() -> None:
        svc = RecordingService.from_url(local.db_url)
        try:
            await svc.upsert_chunk_status("uid-m", 0, "2" * 18, MEETING, local.guild,
                                          f"{root}/chunks/0.opus", "ogg-opus", "done",
                                          mp3_path="x.mp3", sha256="a" * 64, duration_ms=2000)
            await svc.promote_temp_recordings_to_persistent(MEETING, "mixed", manifest.tracks)
        finally:
            await svc.close()

    asyncio.run(promote())
    object_store.put_json(foreign, {"meeting": OTHER})
    object_store.put_json(own, {"meeting": MEETING})
    app = create_app(local.settings(object_store.settings))
    url = f"/api/meetings/{MEETING}/peaks/mix"
    with TestClient(app, follow_redirects=False) as c:
        log_in(c, local)  # alice owns the guild: she sees every meeting
        for doc in (manifest.model_dump(mode="json", exclude_none=True),  # field names
                    manifest.to_api()):  # camelCase, as promotion writes it
            object_store.put_json(f"{root}/final/manifest.json", doc)
            r = c.get(url)
            assert r.status_code == 404, (r.status_code, r.text)
        object_store.put_json(f"{root}/final/manifest.json", _final(root, own).to_api())
        r = c.get(url)
        assert (r.status_code, r.json()) == (200, {"meeting": MEETING})
