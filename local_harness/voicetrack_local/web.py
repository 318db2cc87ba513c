"""The web page as a local process against the local stack and the local Discord.

`WebProcess(discord_info, s3, database_url, log)` runs `voicetrack-web` (the same entry
point as the image) with the local Discord's OAuth2 client credentials, its API base and
authorize URL and the harness CA (`discord.json`, see `voicetrack_local.discord.server`),
on `http://127.0.0.1:<port>`. `login_url` is where a browser starts the log-in: it leads
to the local Discord's consent form, where one picks the user to be.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlsplit

from voicetrack.objectstore import S3Settings
from voicetrack_local import procs
from voicetrack_local.ports import free_port

DEMO_WEB_SECONDS_ENV = "VOICETRACK_DEMO_WEB_SECONDS"
DEMO_WEB_SECONDS = 3.0
"""How long `voicetrack demo` serves the page after the demo by default (s): long enough
to print its URL and log-in link and show it answers, short enough for `make demo` to end."""


def demo_web_seconds() -> float:
    """`VOICETRACK_DEMO_WEB_SECONDS` (s; 0 skips the page), default DEMO_WEB_SECONDS.
    Raises RuntimeError naming the variable when it is not a number >= 0."""
    raw = os.environ.get(DEMO_WEB_SECONDS_ENV, "").strip()
    if not raw:
        return DEMO_WEB_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise RuntimeError(f"{DEMO_WEB_SECONDS_ENV}: {raw!r} is not a number of seconds") \
            from None
    if not value >= 0:
        raise RuntimeError(f"{DEMO_WEB_SECONDS_ENV}: {raw!r} is below 0")
    return value


class WebLaunchError(RuntimeError):
    """The web process exited or did not answer `/healthz` in time (its log's tail)."""


def web_env(discord_info: dict[str, Any], s3: S3Settings, database_url: str, base_url: str,
            secret_key: str) -> dict[str, str]:
    """The `VOICETRACK_*` variables `WebSettings.from_env` reads, for the local Discord
    (its bot token too, so speakers show with their display names)."""
    api = str(discord_info["api_base"])
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(api))
    oauth = discord_info["oauth2"]
    port = urlsplit(base_url).port
    return {
        **s3.env(),
        "VOICETRACK_DATABASE_URL": database_url,
        "VOICETRACK_DISCORD_CLIENT_ID": str(oauth["client_id"]),
        "VOICETRACK_DISCORD_CLIENT_SECRET": str(oauth["client_secret"]),
        "VOICETRACK_DISCORD_API_BASE": api,
        "VOICETRACK_DISCORD_AUTHORIZE_URL": origin + str(oauth["authorize_path"]),
        "VOICETRACK_DISCORD_CA_BUNDLE": str(discord_info["ca_bundle"]),
        "VOICETRACK_DISCORD_BOT_TOKEN": str(discord_info["bot_token"]),
        "VOICETRACK_WEB_SECRET_KEY": secret_key,
        "VOICETRACK_WEB_BASE_URL": base_url,
        "VOICETRACK_WEB_HOST": "127.0.0.1",
        "VOICETRACK_WEB_PORT": str(port),
    }


class WebProcess:
    """`voicetrack-web` as a child process (own process group, log appended to `log_path`)."""

    def __init__(self, discord_info: dict[str, Any], s3: S3Settings, database_url: str,
                 log_path: Path, port: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.secret_key = secrets.token_urlsafe(32)
        self.log_path = log_path
        self.env = {**os.environ, **web_env(discord_info, s3, database_url, self.base_url,
                                            self.secret_key), **(extra_env or {})}
        self.record: procs.ProcRecord | None = None

    @property
    def login_url(self) -> str:
        return f"{self.base_url}/auth/login"

    def start(self, timeout_s: float = 30) -> None:
        """Start and wait for `/healthz`; raises WebLaunchError."""
        proc, self.record = procs.spawn(
            "voicetrack-web", [sys.executable, "-m", "voicetrack_web.main"], self.log_path,
            env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise WebLaunchError(f"voicetrack-web exited ({proc.returncode}):\n"
                                     f"{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise WebLaunchError(f"voicetrack-web did not answer within {timeout_s:.0f} s:\n"
                             f"{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 10) -> None:
        if self.record is not None:
            procs.terminate([self.record], grace=grace_s)
            self.record = None


class LocalWeb:
    """The local Discord of `discord_state_dir` (started, or reused) and a `WebProcess`
    against it: `start()` brings both up (the demo does it while promotion runs, so the
    page costs it no start-up time at its end), `serve(seconds)` prints the page's URL,
    the meeting's, the log-in link and who can log in, then serves until Ctrl-C or
    `seconds`; `stop()` stops the web process and a local Discord started here.
    `extra_guilds`: guild ids whose members the local Discord's users also are (a new
    local Discord only; the demo's). Raises WebLaunchError, `launcher.DiscordLaunchError`."""

    def __init__(self, discord_state_dir: Path, s3: S3Settings, database_url: str,
                 log_path: Path, port: int | None = None,
                 extra_guilds: tuple[str, ...] = ()) -> None:
        self.state_dir = discord_state_dir
        self.s3, self.database_url, self.log_path = s3, database_url, log_path
        self.port, self.extra_guilds = port, extra_guilds
        self.info: dict[str, Any] = {}
        self.web: WebProcess | None = None
        self.ours = False

    def start(self) -> LocalWeb:
        import json

        from voicetrack_local.discord import launcher
        from voicetrack_local.discord.oauth2 import EXTRA_GUILDS_ENV

        self.ours = launcher.running(self.state_dir) is None  # started here: stopped here
        saved = os.environ.get(EXTRA_GUILDS_ENV)
        os.environ[EXTRA_GUILDS_ENV] = ",".join(self.extra_guilds)
        try:
            self.info = json.loads(launcher.up(self.state_dir).read_text())
        finally:
            if saved is None:
                os.environ.pop(EXTRA_GUILDS_ENV, None)
            else:
                os.environ[EXTRA_GUILDS_ENV] = saved
        self.web = WebProcess(self.info, self.s3, self.database_url, self.log_path,
                              port=self.port)
        try:
            self.web.start()
        except BaseException:
            self.stop()
            raise
        return self

    def serve(self, seconds: float | None = None, echo: Any = print,
              meeting_id: str | None = None) -> None:
        """Print where the page is (and `meeting_id`'s page), then serve `seconds` (None:
        until Ctrl-C). Raises WebLaunchError when the web process exits meanwhile."""
        web, info = self.web, self.info
        assert web is not None, "start() first"
        names = [u["name"] for u in info["users"]]
        outsiders = [u["name"] for u in info["oauth2"]["outsiders"]]
        echo(f"web page: {web.base_url}/")
        if meeting_id:
            echo(f"meeting:  {web.base_url}/meetings/{meeting_id}  (after logging in)")
        echo(f"log in:   {web.login_url}  (the local Discord's form: {', '.join(names)} are "
             f"members of guild {info['guild_id']}, {names[0]} owns it; "
             f"{', '.join(outsiders)} is in another guild)")
        echo(f"log:      {self.log_path}")
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while deadline is None or time.monotonic() < deadline:
                if web.record is None or not web.record.alive():
                    raise WebLaunchError(f"voicetrack-web exited:\n{web.tail()}")
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        from voicetrack_local.discord import launcher

        if self.web is not None:
            self.web.stop()
            self.web = None
        if self.ours:
            launcher.down(self.state_dir)
            self.ours = False


def serve(discord_state_dir: Path, s3: S3Settings, database_url: str, log_path: Path,
          port: int | None = None, seconds: float | None = None,
          echo: Any = print, extra_guilds: tuple[str, ...] = (),
          meeting_id: str | None = None) -> None:
    """`voicetrack local web`: `LocalWeb(...).start()`, `serve(seconds)` (until Ctrl-C when
    None), then `stop()`. Raises WebLaunchError and `launcher.DiscordLaunchError`."""
    local = LocalWeb(discord_state_dir, s3, database_url, log_path, port, extra_guilds)
    local.start()
    try:
        local.serve(seconds, echo, meeting_id)
    finally:
        local.stop()
