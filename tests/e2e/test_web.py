"""The web page end to end (issue 14), in real headless chromium (Playwright) against the
local stack: a short RecordingSession with two file speakers who are users of the local
Discord's guild, the web process (`voicetrack-web`, as the image runs it), and the real
OAuth2 authorization-code flow through the local Discord's consent form.

Shows: log-in; the live meeting's chunk progress updating without a reload, then its end;
a waveform per track with its peaks where the speaker spoke; one Play (pressed with the
keyboard) advancing every track's `currentTime` together; a download whose sha256 is the
`recordings` row's; 404 for a member who did not speak and for a user of another guild (page,
JSON, download, audio); a forged or expired cookie refused; phone-width screenshots.
Also: the live meeting's "audio so far" players, refreshed when `live/manifest.json`
changes; the "Download all (zip)" bundle (its `.lof` names every FLAC, each decodes to the
meeting's length); speakers by guild display name, a hostile nickname shown as text; a
member removed from the guild loses access at the next guild-list refresh, and a revoked
Discord token ends the session. Screenshots go to out/screenshots/.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import wave
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import itsdangerous
import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import wait_for
from tests.fixtures.stack import Stack
from voicetrack_local.discord import launcher
from voicetrack_local.web import WebProcess
from voicetrack_web.sessions import TokenBox

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "out" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
AUDIO_MS = 23000
HOSTILE_NICK = "<img src=x onerror=alert(1)>"
GUILD_REFRESH_S = 3
# alice speaks again late: chunks (5 s) seal while someone speaks, so the live audio grows
# while the page is open (a chunk with no packet at all waits for the stop).
ALICE_TALKS = [(300, 2800), (11000, 13000), (16000, 19000)]
BOB_TALKS = [(4200, 7400)]


def wav_bytes(pcm: Any) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(pcm.copy().tobytes())
    return buf.getvalue()


def db(stack: Stack, fn: Any) -> Any:
    """`stack.db(fn)` in a thread of its own: Playwright's sync API keeps an event loop
    running in this one, where `asyncio.run` refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(stack.db, fn).result()


def kget(stack: Stack, ns: str, name: str) -> dict[str, Any] | None:
    res = stack.kubectl("-n", ns, "get", "recsess", name, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


@pytest.fixture
def discord_info(tmp_path: Path) -> Iterator[dict[str, Any]]:
    state = tmp_path / "discord"
    info = json.loads(launcher.up(state).read_text())
    try:
        yield info
    finally:
        launcher.down(state)


def discord_call(info: dict[str, Any], method: str, path: str, headers: dict[str, str],
                 form: dict[str, str] | None = None, body: Any = None) -> int:
    """One request to the local Discord's REST API (its harness CA trusted); the status."""
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    elif body is not None:
        data = json.dumps(body).encode()
        headers = {**headers, "Content-Type": "application/json"}
    req = urllib.request.Request(f"{info['api_base']}{path}", data=data, method=method,
                                 headers=headers)
    ctx = ssl.create_default_context(cafile=str(info["ca_bundle"]))
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        return int(resp.status)


def run_live_assembly(stack: Stack, root: str, guild: str, meeting: str) -> int:
    """`voicetrack-transcoder live` against the live session, as the operator's live Jobs
    run it (tests/e2e/test_live_audio.py tests that trigger with its own operator; the
    shared stack's operator has it off, so the live files change only when this test
    says). The live manifest's `durationMs` after it, 0 when nothing was assembled yet."""
    prefix = root[: -len(f"{guild}/{meeting}")].rstrip("/")
    res = subprocess.run(
        [str(Path(sys.executable).parent / "voicetrack-transcoder"), "live", "--prefix", prefix,
         "--guild-id", guild, "--meeting-id", meeting],
        env={**os.environ, **stack.s3.env()}, capture_output=True, text=True,
        timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    pieces = [k.rsplit("/", 2)[-2] for k in stack.store.list_keys(f"{root}/outputs/")
              if k.endswith("/piece.json")]
    print(f"{time.strftime('%H:%M:%S')} voicetrack-transcoder live: {res.stdout.strip()} "
          f"(pieces of chunks {pieces})")
    if "live:" not in res.stdout:
        return 0
    return int(stack.store.get_json(f"{root}/live/manifest.json")["durationMs"])


def flac_samples(path: Path) -> int:
    """Samples per channel of a FLAC, by decoding all of it (ffmpeg)."""
    res = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-i", str(path),
                          "-f", "s16le", "-ac", "1", "-ar", "48000", "-"],
                         capture_output=True, timeout=120, check=True)
    assert not res.stderr, res.stderr
    return len(res.stdout) // 2


@pytest.fixture
def web(stack: Stack, discord_info: dict[str, Any], tmp_path: Path) -> Iterator[WebProcess]:
    proc = WebProcess(discord_info, stack.s3, stack.database_url, tmp_path / "web.log",
                      extra_env={"VOICETRACK_WEB_GUILD_REFRESH_SECONDS": str(GUILD_REFRESH_S)})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"web log:\n{proc.tail(40)}")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def new_context(browser: Browser, **kw: Any) -> BrowserContext:
    # The local Discord's TLS certificate is issued by the harness CA, which this chromium
    # does not know; the web process itself verifies it (VOICETRACK_DISCORD_CA_BUNDLE).
    return browser.new_context(ignore_https_errors=True, **kw)


def log_in(browser: Browser, web: WebProcess, user: str, **kw: Any) -> tuple[BrowserContext,
                                                                             Page]:
    """Through the page's button and the local Discord's consent form, as `user`."""
    ctx = new_context(browser, **kw)
    page = ctx.new_page()
    page.goto(web.base_url + "/")
    page.get_by_role("link", name="Log in with Discord").click()
    page.wait_for_selector("select#user")
    page.select_option("select#user", label=user)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(web.base_url + "/")
    assert page.get_by_role("button", name="Log out").is_visible()
    return ctx, page


def csrf_of(page: Page) -> str:
    return str(page.eval_on_selector("input[name=csrf_token]", "e => e.value"))


def column_extents(page: Page, track: str) -> list[int]:
    """Per x pixel of the track's drawn waveform: how many pixels of that column are
    painted (wavesurfer.js draws into canvases in its open shadow root)."""
    return list(page.evaluate("""(track) => {
      const host = document.querySelector(`#wave-${track} > div`);
      const canvases = [...host.shadowRoot.querySelectorAll('canvas')]
        .filter(c => c.width > 0 && c.height > 0 && c.closest('[part~=progress]') === null);
      const width = Math.max(...canvases.map(c => c.getBoundingClientRect().right))
        - Math.min(...canvases.map(c => c.getBoundingClientRect().left));
      const cols = new Array(Math.ceil(width)).fill(0);
      const left0 = Math.min(...canvases.map(c => c.getBoundingClientRect().left));
      for (const c of canvases) {
        const r = c.getBoundingClientRect();
        const img = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const sx = c.width / r.width;
        for (let x = 0; x < c.width; x++) {
          let n = 0;
          for (let y = 0; y < c.height; y++) if (img[(y * c.width + x) * 4 + 3] > 0) n++;
          const col = Math.floor(r.left - left0 + x / sx);
          if (col < cols.length) cols[col] = Math.max(cols[col], n);
        }
      }
      return cols;
    }""", track))


def spoke_where(extents: list[int], duration_s: float, talk: tuple[float, float],
                quiet: tuple[float, float]) -> tuple[float, float]:
    """Mean painted height in the `talk` window and in the `quiet` window (seconds)."""
    arr = np.array(extents, dtype=float)

    def mean(a: float, b: float) -> float:
        i, j = int(a / duration_s * len(arr)), int(b / duration_s * len(arr))
        return float(arr[i:j].mean())

    return mean(*talk), mean(*quiet)


def test_web_page(stack: Stack, e2e_namespace: str, discord_info: dict[str, Any],
                  web: WebProcess, browser: Browser, tmp_path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    ns = e2e_namespace
    guild = discord_info["guild_id"]
    users = {u["name"]: u["id"] for u in discord_info["users"]}
    tokens = {u["name"]: u["token"] for u in discord_info["users"]}
    alice, bob = users["alice"], users["bob"]
    outsider = discord_info["oauth2"]["outsiders"][0]["name"]
    # bob gives himself a hostile nickname (Modify Current Member, his own token): the
    # page must show it as text wherever his name appears.
    assert discord_call(discord_info, "PATCH", f"/guilds/{guild}/members/@me",
                        {"Authorization": f"Bot {tokens['bob']}"},
                        body={"nick": HOSTILE_NICK}) == 200

    # A short session: alice speaks first, bob second (both members of the guild).
    keys = []
    for uid, f0, talks in ((alice, 160.0, ALICE_TALKS), (bob, 230.0, BOB_TALKS)):
        key = f"e2e-input/{ns}/{uid}.wav"
        pcm = Speaker(user_id=uid, f0=f0, talks=talks).pcm(AUDIO_MS)
        stack.store.put_bytes(key, wav_bytes(pcm), "audio/wav")
        keys.append(key)
    session = {"apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
               "metadata": {"name": "webcall", "namespace": ns},
               "spec": {"guildId": guild, "channelId": discord_info["voice_channel_id"],
                        "chunkSeconds": 5, "output": {"tracks": "both"},
                        "source": {"type": "files", "speakers": [
                            {"userId": u, "objectKey": k}
                            for u, k in zip((alice, bob), keys, strict=True)]}}}
    stack.kubectl("apply", "-f", "-", input=json.dumps(session))
    meeting = wait_for("the meeting id", lambda: (kget(stack, ns, "webcall") or {}).get(
        "status", {}).get("meetingId"), 60)
    wait_for("a temp row", lambda: db(stack,
        lambda s: s.get_temp_recordings_for_meeting(meeting)), 60)

    # alice (the guild's owner: a manager) logs in and watches the live meeting.
    ctx, page = log_in(browser, web, "alice")
    cookie = next(c for c in ctx.cookies() if c["name"] == "voicetrack_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert time.time() < cookie["expires"] <= time.time() + 8 * 3600 + 60
    page.get_by_role("link", name="Voicetrack Local").click()
    row = page.locator(f"tr[data-id='{meeting}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "recording"
    page.evaluate("window.__sameDocument = true")
    first = row.locator("td[data-label=Progress]").inner_text()
    page.wait_for_function(
        """([id, first]) => {
          const td = document.querySelector(`tr[data-id='${id}'] td[data-label=Progress]`);
          return td && td.textContent !== first;
        }""", arg=[meeting, first], timeout=60_000)
    page.screenshot(path=str(SHOTS / "meetings-live.png"), full_page=True)
    names_cell = row.locator("td[data-label=Speakers]")
    page.wait_for_function(
        "([id, nick]) => document.querySelector(`tr[data-id='${id}'] td[data-label=Speakers]`)"
        ".textContent.includes(nick)", arg=[meeting, HOSTILE_NICK], timeout=15_000)
    assert "alice" in names_cell.inner_text() and names_cell.locator("img").count() == 0

    # The live meeting page: the audio so far, from live/manifest.json (assembled here by
    # `voicetrack-transcoder live`, as the operator's live Jobs do), refreshed in place.
    root = wait_for("a chunk row naming the meeting's keys", lambda: next(
        (r.pcm_path.split("/chunks/")[0] for r in db(
            stack, lambda s: s.get_temp_recordings_for_meeting(meeting))
         if str(getattr(r.transcode_status, "value", r.transcode_status)) == "done"),
        None), 90)
    wait_for("a live assembly", lambda: run_live_assembly(stack, root, guild, meeting), 90)
    dialogs: list[str] = []
    live = ctx.new_page()
    live.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    live.goto(f"{web.base_url}/meetings/{meeting}")
    live.wait_for_selector("#live li.live-track", timeout=30_000)
    live.evaluate("window.__sameDocument = true")
    first_version = live.eval_on_selector("#live", "e => e.dataset.version")
    first_ms = {t: int(v) for t, v in live.eval_on_selector_all(
        "#live li.live-track", "els => els.map(e => [e.dataset.track, e.dataset.durationMs])")}
    assert set(first_ms) >= {alice, "mix"} and all(ms > 0 for ms in first_ms.values())
    so_far = live.locator(f"#live li[data-track='{alice}'] .so-far").inner_text()
    assert re.fullmatch(r"so far, up to 0:[0-5][0-9]", so_far), so_far
    live.wait_for_function(  # the player loads the live MP3 through its presigned link
        "() => [...document.querySelectorAll('#live audio')].every(a => a.duration > 1)",
        timeout=15_000)
    live.screenshot(path=str(SHOTS / "meeting-live.png"), full_page=True)
    with live.expect_response(lambda r: r.url.endswith(f"/live-link/{alice}")) as answer:
        live.locator(f"#live li[data-track='{alice}'] button.download").click()
    link = answer.value.json()
    with urllib.request.urlopen(link["url"], timeout=30) as resp:
        live_mp3 = resp.read()
    manifest_key = f"{root}/live/manifest.json"
    live_doc = stack.store.get_json(manifest_key)
    # a live track has no sha256: its size and the ETag of the object the Job wrote
    track = next(t for t in live_doc["tracks"] if t["track"] == alice)
    assert "sha256" not in track
    assert (len(live_mp3), stack.store.stat(track["key"])[1]) == (track["bytes"],
                                                                 track["etag"])

    # Stop when the audio is in; the list turns to completed by itself.
    wait_for("the audio to be recorded", lambda: (kget(stack, ns, "webcall") or {}).get(
        "status", {}).get("recordedSeconds", 0) * 1000 >= AUDIO_MS + 500, 90)

    # A second chunk is in: the next assembly is longer, and the open page shows it
    # without a reload.
    wait_for("a longer live assembly", lambda: run_live_assembly(
        stack, root, guild, meeting) > live_doc["durationMs"], 120, every_s=2)
    live.wait_for_function("(v) => document.querySelector('#live').dataset.version !== v",
                           arg=first_version, timeout=15_000)
    later = dict(live.eval_on_selector_all(
        "#live li.live-track", "els => els.map(e => [e.dataset.track, +e.dataset.durationMs])"))
    assert later[alice] > first_ms[alice], (first_ms, later)
    assert live.evaluate("window.__sameDocument") is True and not dialogs
    assert live.locator("#live img").count() == 0
    live.close()
    stack.kubectl("-n", ns, "delete", "recsess", "webcall", "--wait=false")
    wait_for("promotion", lambda: kget(stack, ns, "webcall") is None, 240, every_s=1)
    page.wait_for_selector(f"tr[data-id='{meeting}'][data-status=completed]", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True
    page.screenshot(path=str(SHOTS / "meetings.png"), full_page=True)
    recs = {r.user_id or "mix": r for r in db(stack,
        lambda s: s.get_recordings_for_meeting(meeting))}
    assert set(recs) == {alice, bob, "mix"}

    # The meeting page: a waveform per track, peaks where each speaker spoke.
    page.locator(f"tr[data-id='{meeting}'] a").click()
    page.wait_for_selector("#player[data-ready=true]", timeout=30_000)
    assert page.locator(".track[data-drawn=true]").count() == 3
    page.screenshot(path=str(SHOTS / "meeting.png"), full_page=True)
    detail = page.request.get(f"{web.base_url}/api/meetings/{meeting}").json()
    duration_s = detail["duration_ms"] / 1000
    for track in (alice, bob, "mix"):
        extents = column_extents(page, track)
        assert sum(1 for e in extents if e > 4) > len(extents) * 0.05, f"{track}: blank"
    a_talk, a_quiet = spoke_where(column_extents(page, alice), duration_s, (0.6, 2.4),
                                  (4.6, 7.0))
    b_talk, b_quiet = spoke_where(column_extents(page, bob), duration_s, (4.6, 7.0),
                                  (0.6, 2.4))
    assert a_talk > 4 * max(a_quiet, 1.0), (a_talk, a_quiet)
    assert b_talk > 4 * max(b_quiet, 1.0), (b_talk, b_quiet)

    # Speakers by display name; the hostile nickname is text, never markup.
    assert page.locator(f"#label-{bob}").inner_text() == HOSTILE_NICK
    assert page.locator("#player img, .speaker img").count() == 0
    assert HOSTILE_NICK in page.locator("main").inner_text()

    # Download all (zip): built from the final tracks by `RecordingsReader.bundle` (the
    # CLI's code), streamed; the .lof names every FLAC, each decodes to the meeting's length.
    with page.expect_download(timeout=120_000) as dl:
        page.get_by_role("button", name="Download all (zip)").click()
    zpath = tmp_path / "bundle.zip"
    dl.value.save_as(zpath)
    assert dl.value.suggested_filename == f"voicetrack-{meeting}.zip"
    unpacked = tmp_path / "bundle"
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(unpacked)
        members = zf.namelist()
    folder = unpacked / f"voicetrack-{meeting}"
    lof = (folder / f"{meeting}.lof").read_text()
    flacs = sorted(p.name for p in folder.glob("*.flac"))
    assert flacs == sorted([f"{alice}.flac", f"{bob}.flac", "mix.flac"]), members
    assert sorted(ln.split('"')[1] for ln in lof.splitlines()) == flacs, lof
    final_manifest = json.loads((folder / "manifest.json").read_bytes())
    assert (folder / "timeline.json").is_file()
    assert (folder / "consent.json").is_file()  # who was recorded, who opted out
    for name in flacs:
        assert flac_samples(folder / name) == final_manifest["durationMs"] * 48, name
    wait_for("the zip's work directory to be deleted", lambda: not list(
        Path(tempfile.gettempdir()).glob("voicetrack-web-zip-*")), 10)
    assert ctx.request.post(f"{web.base_url}/meetings/{meeting}/bundle").status == 403

    # Keyboard: Tab to "Play all" (visible focus), Space plays every track together.
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "playpause":
            break
    assert page.evaluate("document.activeElement.id") == "playpause"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.keyboard.press("Space")
    page.wait_for_function(  # a function: the page's CSP refuses eval of an expression
        "() => [...document.querySelectorAll('audio')].every(a => a.currentTime > 1.0)",
        timeout=15_000)
    times = page.evaluate("[...document.querySelectorAll('audio')].map(a => a.currentTime)")
    assert len(times) == 3 and max(times) - min(times) < 0.25, times
    page.screenshot(path=str(SHOTS / "meeting-playing.png"), full_page=True)
    page.keyboard.press("Space")
    assert page.evaluate("[...document.querySelectorAll('audio')].every(a => a.paused)")

    # Download: the link is minted on click; its bytes are the recordings row's.
    with page.expect_response(lambda r: r.url.endswith(f"/link/{bob}")) as answer:
        page.locator(f".track[data-track='{bob}'] button.download").click()
    link = answer.value.json()
    assert set(link) == {"url", "expires_in_seconds", "format"} and link["format"] == "mp3"
    assert link["expires_in_seconds"] == 900
    with urllib.request.urlopen(link["url"], timeout=30) as resp:
        body = resp.read()
    assert hashlib.sha256(body).hexdigest() == recs[bob].sha256
    no_csrf = ctx.request.post(f"{web.base_url}/api/meetings/{meeting}/link/{bob}")
    assert no_csrf.status == 403

    # Phone width: the same pages, nothing wider than the screen.
    phone = new_context(browser, viewport={"width": 390, "height": 844},
                        device_scale_factor=2, is_mobile=True, has_touch=True)
    phone.add_cookies([cookie])  # type: ignore[list-item]
    ppage = phone.new_page()
    ppage.goto(f"{web.base_url}/guilds/{guild}")
    ppage.screenshot(path=str(SHOTS / "phone-meetings.png"), full_page=True)
    ppage.goto(f"{web.base_url}/meetings/{meeting}")
    ppage.wait_for_selector("#player[data-ready=true]", timeout=30_000)
    ppage.screenshot(path=str(SHOTS / "phone-meeting.png"), full_page=True)
    assert ppage.evaluate("document.documentElement.scrollWidth") <= 390
    phone.close()

    # The speech timeline promotion wrote (`final/timeline.json`, SpeechTimeline): a lane
    # per speaker; a segment is a button that seeks every track to its start.
    final_dir = recs[bob].object_key.rsplit("/", 1)[0]
    speech = stack.store.get_json(f"{final_dir}/timeline.json")
    assert sorted(speech["speakers"]) == sorted([alice, bob]), speech
    page.reload()
    page.wait_for_selector("#timeline:not([hidden]) .seg", timeout=15_000)
    assert page.locator("#timeline .lane").count() == 2
    page.locator(f"#timeline .seg[data-speaker='{bob}']").first.click()
    at = page.evaluate("[...document.querySelectorAll('audio')].map(a => a.currentTime)")
    assert all(abs(t - at[0]) < 0.05 for t in at) and 3.0 < at[0] < 8.0, at
    page.screenshot(path=str(SHOTS / "meeting-timeline.png"), full_page=True)

    # bob spoke: he sees it too, until he is removed from the guild (Remove Guild Member,
    # by the bot): the next guild-list refresh (GUILD_REFRESH_S) takes his access away.
    bctx, bpage = log_in(browser, web, "bob")
    assert bpage.goto(f"{web.base_url}/meetings/{meeting}").status == 200  # type: ignore[union-attr]
    assert discord_call(discord_info, "DELETE", f"/guilds/{guild}/members/{bob}",
                        {"Authorization": f"Bot {discord_info['bot_token']}"}) == 204
    assert bpage.goto(f"{web.base_url}/meetings/{meeting}").status == 200  # type: ignore[union-attr]
    time.sleep(GUILD_REFRESH_S + 0.5)
    assert bpage.goto(f"{web.base_url}/meetings/{meeting}").status == 404  # type: ignore[union-attr]
    assert bctx.request.get(f"{web.base_url}/api/meetings/{meeting}").status == 404
    bpage.goto(f"{web.base_url}/")
    assert bpage.locator(f"a[href='/guilds/{guild}']").count() == 0
    bctx.close()

    # carol (a member who did not speak) and the outsider (another guild): 404 everywhere.
    for who in ("carol", outsider):
        octx, opage = log_in(browser, web, who)
        token = csrf_of(opage)
        base = f"{web.base_url}"
        assert opage.goto(f"{base}/meetings/{meeting}").status == 404  # type: ignore[union-attr]
        opage.screenshot(path=str(SHOTS / f"404-{who}.png"))
        assert octx.request.get(f"{base}/api/meetings/{meeting}").status == 404
        assert octx.request.get(f"{base}/api/meetings/{meeting}/peaks/{bob}").status == 404
        assert octx.request.get(f"{base}/meetings/{meeting}/audio/{bob}",
                                max_redirects=0).status == 404
        assert octx.request.post(f"{base}/api/meetings/{meeting}/link/{bob}",
                                 headers={"X-CSRF-Token": token}).status == 404
        assert octx.request.post(f"{base}/meetings/{meeting}/bundle",
                                 form={"csrf_token": token}).status == 404
        guild_status = octx.request.get(f"{base}/api/guilds/{guild}/meetings")
        if who == outsider:
            assert guild_status.status == 404
        else:
            assert meeting not in {m["id"] for m in guild_status.json()["meetings"]}
        octx.close()

    # A forged cookie and an expired one are refused (401 on JSON, log-in page on pages).
    value = cookie["value"]
    payload, _, signature = value.rpartition(".")
    forged = payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    session = json.loads(base64.b64decode(value.split(".")[0]))
    stale_signer = itsdangerous.TimestampSigner(web.secret_key)
    stale_signer.get_timestamp = lambda: int(time.time()) - 8 * 3600 - 60  # type: ignore[method-assign]
    expired = stale_signer.sign(base64.b64encode(json.dumps(session).encode())).decode()
    fresh = itsdangerous.TimestampSigner(web.secret_key).sign(
        base64.b64encode(json.dumps(session).encode())).decode()
    for name, val, ok in (("forged", forged, False), ("expired", expired, False),
                          ("re-signed now", fresh, True)):
        c2 = new_context(browser)
        c2.add_cookies([{**cookie, "value": val}])
        res = c2.request.get(f"{web.base_url}/api/meetings/{meeting}")
        assert (res.status == 200) is ok, (name, res.status)
        if not ok:
            assert res.status == 401
            p2 = c2.new_page()
            p2.goto(f"{web.base_url}/meetings/{meeting}")
            assert p2.url == web.base_url + "/"
            assert p2.get_by_role("link", name="Log in with Discord").is_visible()
        c2.close()

    # A revoked Discord token (RFC 7009, with the app's credentials) ends the session at
    # the next refresh: JSON answers 401, pages ask to log in again.
    rctx, rpage = log_in(browser, web, "alice")
    rcookie = next(c for c in rctx.cookies() if c["name"] == "voicetrack_session")
    sealed = json.loads(base64.b64decode(rcookie["value"].split(".")[0]))["tok"]
    access = TokenBox(web.secret_key).open(sealed)  # the cookie holds it encrypted
    assert access
    oauth = discord_info["oauth2"]
    assert discord_call(discord_info, "POST", "/oauth2/token/revoke", {}, form={
        "token": access, "client_id": oauth["client_id"],
        "client_secret": oauth["client_secret"]}) == 200
    assert rctx.request.get(f"{web.base_url}/api/meetings/{meeting}").status == 200
    time.sleep(GUILD_REFRESH_S + 0.5)
    rpage.goto(f"{web.base_url}/meetings/{meeting}")
    assert rpage.url == web.base_url + "/?error=expired"
    assert rpage.get_by_role("alert").inner_text().startswith("Your Discord log-in expired")
    assert rctx.request.get(f"{web.base_url}/api/meetings/{meeting}").status == 401
    rctx.close()

    # The OAuth2 state must come back: a callback without it is refused.
    c3 = new_context(browser)
    assert c3.request.get(f"{web.base_url}/auth/callback?code=x&state=y").status == 400
    c3.close()
    ctx.close()
