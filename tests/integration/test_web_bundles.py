"""The "Download all (zip)" bundle's disk budget, on the real web process (`voicetrack-web`
under uvicorn, as the image runs it), a real promotion in SeaweedFS (ffmpeg), the local
Discord's log-in and SQLite: clients that post and never read hold their bundle's slot
until they leave; at most `max_bundles` zips are on the pod's disk at once; a second
bundle of the same user and a bundle past the limit are answered 429 with Retry-After
(nothing waits on disk); once the clients leave the zips are deleted and a bundle is
served again. A bundle whose disk fails it (the temp dir gone) is 503 with Retry-After and
frees its slot."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.audio_helpers import Speaker, promote_plan, upload_chunks
from tests.integration.test_recordings_cli import (  # noqa: F401 (the fixture)
    BIN,
    DONE,
    GUILD,
    A,
    B,
    World,
    world,
)
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest, PromotionPlan
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.discord import launcher
from voicetrack_local.discord.oauth2 import EXTRA_GUILDS_ENV
from voicetrack_local.web import WebProcess
from voicetrack_web.settings import MAX_BUNDLES

pytestmark = pytest.mark.integration

SESSION_MS = 120_000
"""Long enough that the zip (~7 MB) outgrows what loopback TCP buffers for a client that
reads nothing (~3 MB: the sender's buffer grows to tcp_wmem's 4 MiB)."""


@pytest.fixture(scope="module")
def promoted(s3_server: S3Settings) -> tuple[ObjectStore, MeetingLayout, FinalManifest]:
    """Meeting DONE promoted for real: A and B talk for SESSION_MS, FLAC."""
    store = ObjectStore(dataclasses.replace(s3_server, bucket=f"vt-web-zip-{os.getpid()}"))
    store.ensure_bucket()
    layout = MeetingLayout("recordings", GUILD, DONE)
    speakers = [Speaker(A, 180, talks=[(0, SESSION_MS)]),
                Speaker(B, 260, talks=[(0, SESSION_MS)])]
    windows = [(i, min(i + 10_000, SESSION_MS)) for i in range(0, SESSION_MS, 10_000)]
    session = upload_chunks(store, layout, speakers, windows, SESSION_MS, [])
    plan = PromotionPlan(guild_id=GUILD, meeting_id=DONE, prefix=layout.prefix,
                         session_end_ms=SESSION_MS, speakers=[A, B], chunks=session.chunks,
                         formats=["flac"])
    return store, layout, promote_plan(store, layout, plan, 300)


@pytest.fixture
def discord_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The local Discord, its users also members of the promoted meeting's guild."""
    monkeypatch.setenv(EXTRA_GUILDS_ENV, GUILD)
    state = tmp_path / "discord"
    info = json.loads(launcher.up(state).read_text())
    try:
        yield info
    finally:
        launcher.down(state)


@pytest.fixture
def web(world: World, discord_info: dict[str, Any],  # noqa: F811 (the imported fixture)
        tmp_path: Path) -> Iterator[WebProcess]:
    """The web process with its temp dir (where bundles are built) at `tmp_path/tmp`;
    bob and carol took part in the meeting (temp rows), alice owns the guild."""
    users = {u["name"]: u["id"] for u in discord_info["users"]}

    async def members(svc: Any) -> None:
        for index, name in enumerate(("bob", "carol"), start=10):
            await svc.upsert_chunk_status("uid-done", index, users[name], DONE, GUILD,
                                          f"raw/{index}.opus", "ogg-opus", "queued")

    world.db(members)
    (tmp_path / "tmp").mkdir()
    proc = WebProcess(discord_info, world.store.settings, world.db_url, tmp_path / "web.log",
                      extra_env={"TMPDIR": str(tmp_path / "tmp")})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def log_in(web: WebProcess, info: dict[str, Any], user: str) -> tuple[str, str]:
    """`user`'s session cookie and CSRF token, through the local Discord's log-in."""
    tls = ssl.create_default_context(cafile=info["ca_bundle"])
    with httpx.Client(base_url=web.base_url, follow_redirects=False) as page, \
            httpx.Client(verify=tls, follow_redirects=False) as discord:
        start = page.get("/auth/login")
        back = discord.get(f"{start.headers['location']}&login_hint={user}")
        assert page.get(back.headers["location"]).status_code == 303
        cookie = page.cookies["voicetrack_session"]
    raw = cookie.split(".")[0]
    csrf = json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)))["csrf"]
    return cookie, csrf


def post_and_never_read(web: WebProcess, cookie: str, csrf: str) -> socket.socket:
    """A bundle POST from a client that reads nothing (a tiny receive window)."""
    body = urlencode({"csrf_token": csrf}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", web.port))
    sock.sendall(
        f"POST /meetings/{DONE}/bundle HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\n"
        f"Cookie: voicetrack_session={cookie}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def post(web: WebProcess, cookie: str, csrf: str) -> httpx.Response:
    with httpx.Client(base_url=web.base_url, timeout=120,
                      cookies={"voicetrack_session": cookie}) as c:
        return c.post(f"/meetings/{DONE}/bundle", data={"csrf_token": csrf})


class DiskWatch:
    """Counts the bundle directories in the web's temp dir every 20 ms; `most` seen."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return len(list(self.tmp.glob("voicetrack-web-zip-*")))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, self.now())
            time.sleep(0.02)

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.now() != count:
            assert time.monotonic() < deadline, f"{self.now()} bundle dirs, not {count}"
            time.sleep(0.05)

    def wait_built(self, count: int, timeout_s: float = 120) -> None:
        """Until `count` bundles are whole zips (their build over)."""
        deadline = time.monotonic() + timeout_s
        while len(list(self.tmp.glob("voicetrack-web-zip-*/voicetrack-*.zip"))) < count:
            assert time.monotonic() < deadline, f"fewer than {count} zips built"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_bundles_are_bounded_until_sent(web: WebProcess, discord_info: dict[str, Any],
                                        tmp_path: Path) -> None:
    alice, bob, carol = (log_in(web, discord_info, u) for u in ("alice", "bob", "carol"))
    watch = DiskWatch(tmp_path / "tmp")
    socks = []
    try:
        socks.append(post_and_never_read(web, *alice))
        watch.wait_for(1)
        socks.append(post_and_never_read(web, *bob))
        watch.wait_for(2)
        watch.wait_built(2)
        time.sleep(1)  # both built, both stuck in sending: still on disk
        assert watch.now() == MAX_BUNDLES
        for who, cookie in (("carol (no slot left)", carol), ("alice (her second)", alice)):
            t = time.monotonic()
            r = post(web, *cookie)
            waited = time.monotonic() - t
            assert r.status_code == 429, (who, r.status_code, f"{waited:.1f} s",
                                          r.headers.get("content-type"))
            assert int(r.headers["retry-after"]) > 0 and waited < 5, who
        assert watch.most <= MAX_BUNDLES, f"{watch.most} bundles on disk at once"
    finally:
        for s in socks:
            s.close()
    watch.wait_for(0)  # the clients left: their zips are gone, their slots free
    r = post(web, *carol)
    watch.stop()
    assert r.status_code == 200 and r.content[:2] == b"PK", r.status_code
    # deleted once sent: the server's response ends after the client has the last byte
    watch.wait_for(0, timeout_s=10)
    assert watch.most <= MAX_BUNDLES


def test_a_bundle_the_disk_fails_frees_its_slot(web: WebProcess, discord_info: dict[str, Any],
                                                tmp_path: Path) -> None:
    """The web's temp dir gone (as when `/tmp` is full or unwritable): the bundle's
    directory cannot be made, the answer is 503 with Retry-After, and its slot is free at
    once: with the disk back, the same users and everyone else get their zip (before, the
    slot stayed taken: alice, then with both slots lost everyone, got 429 until a restart)."""
    alice, bob, carol = (log_in(web, discord_info, u) for u in ("alice", "bob", "carol"))
    tmp = tmp_path / "tmp"
    watch = DiskWatch(tmp)
    try:
        r = post(web, *alice)  # the process found its temp dir (cached from now on)
        assert r.status_code == 200 and r.content[:2] == b"PK", r.status_code
        watch.wait_for(0)
        tmp.rmdir()
        for who, cookie in (("alice", alice), ("bob", bob)):
            r = post(web, *cookie)
            assert r.status_code == 503, (who, r.status_code, r.text[:300])
            assert int(r.headers["retry-after"]) > 0, who
            assert "cannot be made on the server now (No such file or directory)" in r.text, \
                r.text[-1000:]
            assert str(tmp) not in r.text, "the answer names a server path"
        tmp.mkdir()
        for who, cookie in (("carol", carol), ("alice", alice)):
            r = post(web, *cookie)
            assert r.status_code == 200 and r.content[:2] == b"PK", (who, r.status_code)
        watch.wait_for(0)
    finally:
        watch.stop()
        tmp.mkdir(exist_ok=True)
