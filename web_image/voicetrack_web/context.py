"""What every handler shares: the process state, the viewer from the session (with its
guild list refreshed from Discord when stale), CSRF checks, the meeting lookup, templates.

The session (Starlette's signed cookie) holds `sid` (random, `sessions.new_session_id`),
`uid`, `name`, `csrf`, `guilds` (`[[id, name, manager]]`, guilds with meetings only), `tok`
(the user's Discord access token, encrypted: `sessions.TokenBox`, to read the guild list
again), `guilds_at` (Unix s of that read) and, after a 429, `guilds_retry_at` (Unix s
before which Discord asked not to be asked again). A session without `sid`, or whose
`sid` was logged out (`sessions.RevokedSessions`), is no session.

A list older than `settings.guild_refresh_s` is read again on the next request; a 401
from Discord ends the session (pages go to `/?error=expired`, JSON answers 401). When
Discord does not renew it (429, 5xx, unreachable) the old list is kept, but only while it
is younger than `settings.guild_limit_s`: past that the session ends the same way (fail
closed: a member removed from a guild, or a manager who lost Manage Server, cannot keep
its meetings by making Discord refuse). After a 429 Discord is not asked again before its
`Retry-After`, within the same limit.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from voicetrack.objectstore import ObjectStore
from voicetrack.recordings.service import RecordingsReader
from voicetrack_web.access import MeetingAccess, MeetingView, Track, Viewer, read_only_engine
from voicetrack_web.bundles import BundleSlots
from voicetrack_web.discord import DiscordAuthError, DiscordOAuth, RateLimited, TokenRefused
from voicetrack_web.members import MemberNames
from voicetrack_web.sessions import RevokedSessions, TokenBox
from voicetrack_web.settings import WebSettings

HERE = Path(__file__).parent
log = logging.getLogger("voicetrack_web")


class State:
    """What the process shares: settings, the Discord client and the member-name cache,
    the read-only DB access, the store, the recordings reader and slots (the zip
    bundle's), the cookie's token box and the sessions logged out here."""

    def __init__(self, settings: WebSettings) -> None:
        from voicetrack.db.service import RecordingService

        self.settings = settings
        self.discord = DiscordOAuth(settings)
        self.names = MemberNames(self.discord, settings.names_ttl_s)
        self.engine = read_only_engine(settings.database_url)
        self.access = MeetingAccess(self.engine)
        self.store = ObjectStore(settings.s3)
        self.reader = RecordingsReader(RecordingService(self.engine), self.store)
        self.bundles = BundleSlots(settings.max_bundles)
        self.tokens = TokenBox(settings.secret_key)
        self.revoked = RevokedSessions(settings.session_max_age_s)

    async def close(self) -> None:
        await self.discord.close()
        await self.engine.dispose()


class Redirect(Exception):
    """Answered with a 303 to `url` (a page request without a usable session)."""

    def __init__(self, url: str) -> None:
        self.url = url


def state_of(request: Request) -> State:
    state: State = request.app.state.voicetrack
    return state


def logged_in(request: Request) -> bool:
    """Whether the cookie carries a live log-in (a `sid` not logged out, and a user)."""
    s = request.session
    sid = s.get("sid")
    return bool(sid) and "uid" in s and not state_of(request).revoked.revoked(str(sid))


def _viewer(request: Request) -> Viewer | None:
    if not logged_in(request):
        return None
    s = request.session
    return Viewer(s["uid"], {g[0]: bool(g[2]) for g in s.get("guilds", [])})


async def refresh_guilds(request: Request, now: float | None = None) -> bool:
    """Read the user's guilds again when the session's list is older than
    `guild_refresh_s` (`now`: Unix s). False when the session ended: no token, Discord
    answered 401, or it did not renew the list (429, 5xx, unreachable) and the list is
    `guild_limit_s` old; True otherwise (the list kept younger than the limit)."""
    s = request.session
    st = state_of(request)
    now = time.time() if now is None else now
    age = now - float(s.get("guilds_at", 0))
    if age < st.settings.guild_refresh_s:
        return True
    expired = age >= st.settings.guild_limit_s
    if now < float(s.get("guilds_retry_at", 0)):  # Discord's Retry-After
        return _end(request, "its Retry-After outlasts the limit") if expired else True
    token = st.tokens.open(s.get("tok"))
    if not token:
        s.clear()
        return False
    try:
        guilds = await st.discord.guilds(token)
    except TokenRefused:
        s.clear()
        return False
    except DiscordAuthError as exc:
        if isinstance(exc, RateLimited):
            s["guilds_retry_at"] = now + exc.retry_after_s
        if expired:
            return _end(request, str(exc))
        log.warning("guild list of %s not refreshed (kept, %.0f s old): %s",
                    s.get("uid"), age, exc)
        return True
    s.pop("guilds_retry_at", None)
    with_meetings = await st.access.guilds_with_meetings(g.id for g in guilds)
    s["guilds"] = [[g.id, g.name, g.manager] for g in guilds if g.id in with_meetings]
    s["guilds_at"] = now
    return True


def _end(request: Request, why: str) -> bool:
    """End the session whose guild list Discord did not renew within the limit; False."""
    log.warning("session of %s ended: guild list past its limit (%d s) and not renewed: %s",
                request.session.get("uid"), state_of(request).settings.guild_limit_s, why)
    request.session.clear()
    return False


async def require_viewer(request: Request, api: bool) -> Viewer:
    """The logged-in viewer (guild list refreshed when stale). Without a session: 401 for
    JSON, a redirect to `/` for pages (`/?error=expired` when Discord refused the token)."""
    viewer = _viewer(request)
    if viewer is not None and not await refresh_guilds(request):
        if api:
            raise HTTPException(401, "your Discord log-in expired: log in again")
        raise Redirect("/?error=expired")
    viewer = _viewer(request)
    if viewer is None:
        if api:
            raise HTTPException(401, "log in first")
        raise Redirect("/")
    return viewer


def check_csrf(request: Request, supplied: str | None) -> None:
    """403 unless `supplied` is the session's CSRF token and `Origin` (when sent) is ours."""
    expected = request.session.get("csrf")
    if not expected or not supplied or not secrets.compare_digest(str(supplied), expected):
        raise HTTPException(403, "CSRF token missing or wrong")
    origin = request.headers.get("origin")
    base = urlsplit(state_of(request).settings.base_url)
    if origin and origin != f"{base.scheme}://{base.netloc}":
        raise HTTPException(403, "cross-origin request")


def not_found() -> HTTPException:
    return HTTPException(404, "no such meeting")


async def meeting_of(request: Request, api: bool) -> tuple[Viewer, MeetingView]:
    """The viewer and the meeting of the path's `{meeting}`; 404 when not visible."""
    viewer = await require_viewer(request, api)
    view = await state_of(request).access.meeting(viewer, request.path_params["meeting"])
    if view is None:
        raise not_found()
    return viewer, view


def track_of(view: MeetingView, name: str) -> Track:
    track = next((t for t in view.tracks if t.track == name), None)
    if track is None:
        raise not_found()
    return track


TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))


def page(request: Request, name: str, **ctx: Any) -> Response:
    """Template `name` with the user, the CSRF token and the guild list."""
    s, user = request.session, logged_in(request)
    return TEMPLATES.TemplateResponse(request, name, {
        "user": {"id": s["uid"], "name": s["name"]} if user else None,
        "csrf": s.get("csrf", "") if user else "", "guilds": s.get("guilds", []) if user else [],
        **ctx})
